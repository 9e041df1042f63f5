//! The CRD manifests in deploy/charts/weft/crds (the chart's, rendered into deploy/base) are generated from the Rust types.

use std::path::PathBuf;

#[test]
fn crds_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/charts/weft/crds");
    let update = std::env::var_os("WEFT_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (file, yaml) in weft_cluster::crd::crd_manifests() {
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).expect("create crds dir");
            std::fs::write(&path, &yaml).expect("write crd");
            continue;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != yaml {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD manifests {stale:?}; regenerate with WEFT_UPDATE_CRDS=1 cargo test -p weft-controller --test crds"
    );
}
