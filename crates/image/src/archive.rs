//! An image as an OCI image-layout archive (`<name>.oci.tar`): the
//! `oci-layout` marker, `index.json` naming one manifest, and the blobs
//! (the base layer, the image's own layer, its config and its manifest)
//! under `blobs/sha256/`. `skopeo copy oci-archive:…` and `podman load`
//! read it. Layers are uncompressed tar (`application/vnd.oci.image.layer.v1.tar`):
//! assembling takes seconds, and registries store what they are given.
//!
//! Archives are cached: beside each one, `<name>.oci.json` records the key
//! of its inputs (the spec, the base layer's digest, each file's path,
//! size and modification time) and the manifest digest; the same key
//! reuses the archive.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder, Sha256Digest,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::BaseLayer;
use crate::layer::{Blob, LayerWriter};
use crate::{Error, Result, digest_of, io};

/// A file the image carries besides its base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// The file on this machine.
    pub source: PathBuf,
    /// Its path in the image (`/usr/local/bin/ztunnel`).
    pub path: String,
    /// Its mode (`0o755`).
    pub mode: u32,
}

/// What an image holds and how it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    /// Its repository name (`controller`): the archive is `<name>.oci.tar`.
    pub name: String,
    /// Its full reference (`ghcr.io/weft-mesh/controller:latest`).
    pub reference: String,
    /// Files on top of the base.
    pub files: Vec<FileSpec>,
    /// The image config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The image config's `Cmd`.
    pub cmd: Vec<String>,
    /// `User`: `uid:gid`.
    pub user: String,
    /// `Env`: `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// An archive written (or found in the cache).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    /// Its repository name.
    pub name: String,
    /// Its full reference.
    pub reference: String,
    /// The archive.
    pub archive: PathBuf,
    /// The manifest's digest: what `…@sha256:` pins.
    pub digest: String,
    /// The size of its layers and config, in bytes (uncompressed).
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    built: Built,
}

/// Sorts every object's keys, so that JSON made from hash maps is the same
/// bytes every time (digests must not depend on iteration order).
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|e| Error::Invalid(e.to_string()))?;
    serde_json::to_vec(&canonical(value)).map_err(|e| Error::Invalid(e.to_string()))
}

fn descriptor(media: MediaType, digest: &str, size: u64) -> Result<Descriptor> {
    let hex = digest.trim_start_matches("sha256:");
    let digest: Sha256Digest = hex
        .parse()
        .map_err(|e| Error::Invalid(format!("digest {digest}: {e}")))?;
    Ok(Descriptor::new(media, size, digest))
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::Invalid(format!("OCI spec: {e}"))
}

/// The key of `spec`'s inputs.
fn key(spec: &ImageSpec, base: &BaseLayer) -> Result<String> {
    let mut text = json_bytes(spec)?;
    text.extend_from_slice(base.digest.as_bytes());
    for file in &spec.files {
        let meta = std::fs::metadata(&file.source).map_err(io(&file.source))?;
        text.extend_from_slice(
            format!(
                "\n{} {} {}.{}",
                file.source.display(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
    }
    Ok(digest_of(&text))
}

/// Writes `spec` on `base` as `<out>/<name>.oci.tar`, unless the cache
/// already holds it.
pub fn build(spec: &ImageSpec, base: &BaseLayer, out: &Path) -> Result<Built> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let key = key(spec, base)?;
    let record_path = out.join(format!("{}.oci.json", spec.name));
    if let Ok(text) = std::fs::read(&record_path)
        && let Ok(record) = serde_json::from_slice::<Record>(&text)
        && record.key == key
        && record.built.archive.is_file()
    {
        return Ok(record.built);
    }
    let work = out.join(format!(".{}.{}", spec.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let built = write(spec, base, &work, out);
    let _ = std::fs::remove_dir_all(&work);
    let built = built?;
    let text = json_bytes(&Record {
        key,
        built: built.clone(),
    })?;
    // Renamed into place: a concurrent reader sees the old record or this.
    let partial = out.join(format!(".{}.oci.json.{}", spec.name, std::process::id()));
    std::fs::write(&partial, text).map_err(io(&partial))?;
    std::fs::rename(&partial, &record_path).map_err(io(&record_path))?;
    Ok(built)
}

fn write(spec: &ImageSpec, base: &BaseLayer, work: &Path, out: &Path) -> Result<Built> {
    let mut layer = LayerWriter::create(&work.join("layer.tar"))?;
    for file in &spec.files {
        layer.file(&file.path, &file.source, file.mode)?;
    }
    let own = layer.finish()?;
    let labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = ImageConfigurationBuilder::default()
        .created("1970-01-01T00:00:00Z")
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(spec.entrypoint.clone())
                .cmd(spec.cmd.clone())
                .user(spec.user.clone())
                .env(spec.env.clone())
                .working_dir(spec.working_dir.clone())
                .labels(labels)
                .build()
                .map_err(spec_err)?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![base.digest.clone(), own.digest.clone()])
                .build()
                .map_err(spec_err)?,
        )
        .build()
        .map_err(spec_err)?;
    let config_bytes = json_bytes(&config)?;
    let config_digest = digest_of(&config_bytes);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_bytes.len() as u64,
        )?)
        .layers(vec![
            descriptor(MediaType::ImageLayer, &base.digest, base.size)?,
            descriptor(MediaType::ImageLayer, &own.digest, own.size)?,
        ])
        .build()
        .map_err(spec_err)?;
    let manifest_bytes = json_bytes(&manifest)?;
    let manifest_digest = digest_of(&manifest_bytes);
    let tag = spec.reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let annotations: HashMap<String, String> = [
        (
            "org.opencontainers.image.ref.name".to_string(),
            tag.to_string(),
        ),
        (
            "io.containerd.image.name".to_string(),
            spec.reference.clone(),
        ),
    ]
    .into();
    let in_index = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(
            manifest_digest
                .trim_start_matches("sha256:")
                .parse::<Sha256Digest>()
                .map_err(spec_err)?,
        )
        .size(manifest_bytes.len() as u64)
        .annotations(annotations)
        .build()
        .map_err(spec_err)?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![in_index])
        .build()
        .map_err(spec_err)?;

    let archive = out.join(format!("{}.oci.tar", spec.name));
    let partial = work.join("archive.tar");
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, source: Source<'_>| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        match source {
            Source::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty())
            }
            Source::Bytes(bytes) => {
                h.set_mode(0o644);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, path, bytes)
            }
            Source::File(blob) => {
                let f = std::fs::File::open(&blob.path).map_err(io(&blob.path))?;
                h.set_mode(0o644);
                h.set_size(blob.size);
                tar.append_data(&mut h, path, f)
            }
        }
        .map_err(io(Path::new(path)))
    };
    let blob_path = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    add(
        "oci-layout",
        Source::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#),
    )?;
    add("index.json", Source::Bytes(&json_bytes(&index)?))?;
    add("blobs/", Source::Dir)?;
    add("blobs/sha256/", Source::Dir)?;
    let base_blob = Blob {
        path: base.path.clone(),
        digest: base.digest.clone(),
        size: base.size,
    };
    add(&blob_path(&base.digest), Source::File(&base_blob))?;
    add(&blob_path(&own.digest), Source::File(&own))?;
    add(&blob_path(&config_digest), Source::Bytes(&config_bytes))?;
    add(&blob_path(&manifest_digest), Source::Bytes(&manifest_bytes))?;
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io(&partial))?;
    std::fs::rename(&partial, &archive).map_err(io(&archive))?;
    Ok(Built {
        name: spec.name.clone(),
        reference: spec.reference.clone(),
        archive,
        digest: manifest_digest,
        size: base.size + own.size + config_bytes.len() as u64,
    })
}

enum Source<'a> {
    Dir,
    Bytes(&'a [u8]),
    File(&'a Blob),
}
