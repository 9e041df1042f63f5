//! The config stream's responses as gRPC frames, sharing encoded snapshots.
//!
//! A full snapshot is most of the controller's outgoing bytes (≈ 1 MB at 10k
//! pods, 5 MB at 50k), and its workloads, Services and trust bundles are
//! the same for every subscriber of a model version: only authorizations
//! and routes are trimmed per proxy. So each of those types is encoded once
//! per version ([`SnapshotCache`]) and every subscriber's response points at
//! the same bytes; only the response's own fields (nonce, version) and the
//! trimmed types are encoded per subscriber.
//!
//! Why not tonic's encoder: it encodes each message into a per-stream
//! buffer, which keeps the capacity of the largest message it sent for the
//! stream's life, so every subscriber held a snapshot-sized buffer after its
//! first response — memory that grew with the number of proxies
//! (docs/benchmarks.md, `controller`). [`ConfigService`] serves the one
//! method itself: requests are decoded by tonic, responses are written as
//! ready-made frames ([`Encoded`]) whose bytes are freed once sent.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use weft_api::config::{ConfigRequest, ConfigResponse, ResourceType};
use weft_cluster::model::Model;
use weft_cluster::model::audience::Visible;

use super::ConfigServer;

/// The largest request accepted (ACKs, NACKs and Subscribes are small;
/// tonic's default).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// One gRPC message, as the chunks it is written in: the length prefix and
/// the response's own fields first, then possibly shared encoded resources.
#[derive(Debug)]
pub(crate) struct Encoded {
    chunks: Vec<Bytes>,
}

impl Encoded {
    /// `response` with `shared` (already encoded `resources` fields, in
    /// order) between its own resources and its removed keys. Field order
    /// is protobuf's usual (1..5) when `response.resources` is empty or
    /// `shared` is; protobuf parsers accept any order and concatenate
    /// repeated fields anyway.
    pub(crate) fn response(response: &ConfigResponse, shared: &[Arc<Bytes>]) -> Encoded {
        let head = ConfigResponse {
            nonce: response.nonce.clone(),
            version: response.version,
            full_snapshot: response.full_snapshot,
            resources: Vec::new(),
            removed: Vec::new(),
        };
        let own_resources = ConfigResponse {
            resources: response.resources.clone(),
            ..ConfigResponse::default()
        };
        let removed = ConfigResponse {
            removed: response.removed.clone(),
            ..ConfigResponse::default()
        };
        Self::from_parts(&head, shared, &own_resources, &removed)
    }

    fn from_parts(
        head: &ConfigResponse,
        shared: &[Arc<Bytes>],
        own_resources: &ConfigResponse,
        removed: &ConfigResponse,
    ) -> Encoded {
        let len = head.encoded_len()
            + shared.iter().map(|b| b.len()).sum::<usize>()
            + own_resources.encoded_len()
            + removed.encoded_len();
        let mut first = BytesMut::with_capacity(5 + head.encoded_len());
        first.put_u8(0);
        // A response over 4 GiB cannot be framed; gRPC clients refuse far
        // smaller ones (the proxies allow 256 MiB).
        first.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        head.encode_raw(&mut first);
        let mut chunks = vec![first.freeze()];
        chunks.extend(shared.iter().map(|b| Bytes::clone(b)));
        for part in [own_resources, removed] {
            if part.encoded_len() > 0 {
                chunks.push(part.encode_to_vec().into());
            }
        }
        Encoded { chunks }
    }

    /// The message without its 5-byte prefix.
    #[cfg(test)]
    fn message(&self) -> Bytes {
        let all: Vec<u8> = self.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        Bytes::from(all).slice(5..)
    }
}

/// The resources of one type encoded as `ConfigResponse.resources` fields,
/// per model version, for as long as some stream still holds them (a stream
/// holds them until its snapshot is answered): concurrent snapshots of a
/// version share one encoding, and none outlives its use.
#[derive(Default)]
pub(crate) struct SnapshotCache {
    entries: Mutex<HashMap<(u64, ResourceType), Weak<Bytes>>>,
}

impl SnapshotCache {
    /// Encoded resources of `kind` in `model` (of `version`) as seen
    /// through `view`. Types a view trims are encoded per caller; the
    /// others are shared.
    pub(crate) fn resources(
        &self,
        version: u64,
        model: &Model,
        kind: ResourceType,
        view: Option<&Visible>,
    ) -> Arc<Bytes> {
        let encode = || {
            let fields = ConfigResponse {
                resources: model.visible_resources(kind, view),
                ..ConfigResponse::default()
            };
            Arc::new(Bytes::from(fields.encode_to_vec()))
        };
        let trimmed =
            view.is_some() && matches!(kind, ResourceType::Authorization | ResourceType::Route);
        if trimmed {
            return encode();
        }
        let key = (version, kind);
        if let Some(bytes) = self.entries.lock().get(&key).and_then(Weak::upgrade) {
            return bytes;
        }
        // Encoded without the lock: a snapshot takes milliseconds, and other
        // types and versions need not wait. Two streams racing here both
        // encode; the first one stored is kept.
        let bytes = encode();
        let mut entries = self.entries.lock();
        entries.retain(|_, weak| weak.strong_count() > 0);
        match entries.get(&key).and_then(Weak::upgrade) {
            Some(theirs) => theirs,
            None => {
                entries.insert(key, Arc::downgrade(&bytes));
                bytes
            }
        }
    }
}

/// A response body of ready-made gRPC messages, then the status trailers.
struct Frames {
    rx: mpsc::Receiver<Result<Encoded, Status>>,
    queued: VecDeque<Bytes>,
    done: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.queued.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Ok(encoded)) => {
                    self.queued.extend(encoded.chunks);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(status) = status.add_header(&mut trailers) {
                return Poll::Ready(Some(Err(status)));
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queued.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The config stream service (`weft.config.v1.ConfigDiscovery`): tonic
/// decodes the requests, [`Frames`] writes the responses.
#[derive(Clone)]
pub struct ConfigService(Arc<ConfigServer>);

impl ConfigService {
    /// Serves `server`'s config stream.
    pub fn new(server: ConfigServer) -> ConfigService {
        ConfigService(Arc::new(server))
    }
}

impl NamedService for ConfigService {
    const NAME: &'static str = weft_api::config::config_discovery_server::SERVICE_NAME;
}

const SUBSCRIBE: &str = "/weft.config.v1.ConfigDiscovery/Subscribe";

impl Service<http::Request<tonic::body::Body>> for ConfigService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != SUBSCRIBE {
                return Ok(Status::unimplemented("").into_http());
            }
            // As tonic's generated service: no compression either way.
            let (parts, body) = request.into_parts();
            let requests = Streaming::new_request(
                tonic_prost::ProstDecoder::<ConfigRequest>::default(),
                body,
                None,
                Some(MAX_REQUEST_BYTES),
            );
            let request = tonic::Request::from_http(http::Request::from_parts(parts, requests));
            match server.subscribe(request).await {
                Ok(rx) => {
                    let body = Frames {
                        rx,
                        queued: VecDeque::new(),
                        done: false,
                    };
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        tonic::metadata::GRPC_CONTENT_TYPE,
                    );
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::config::{Resource, ResourceKey, TrustBundle, Workload, resource};

    fn model(workloads: usize) -> Model {
        let mut model = Model::default();
        for i in 0..workloads {
            let uid = format!("uid-{i}");
            model.workloads.insert(
                uid.clone(),
                Workload {
                    uid,
                    name: format!("pod-{i}"),
                    namespace: "ns".into(),
                    ..Workload::default()
                },
            );
        }
        model.trust_bundles.insert(
            "cluster.local".into(),
            TrustBundle {
                trust_domain: "cluster.local".into(),
                roots_pem: vec!["root".into()],
            },
        );
        model
    }

    #[test]
    fn snapshots_of_one_version_share_their_encoded_resources() {
        let (model, cache) = (model(100), SnapshotCache::default());
        let view = Visible::default();
        let a = cache.resources(7, &model, ResourceType::Workload, Some(&view));
        let b = cache.resources(7, &model, ResourceType::Workload, None);
        assert!(Arc::ptr_eq(&a, &b), "one encoding for every subscriber");
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "the cache holds no strong reference"
        );
        // The frames point at the shared bytes: no copy per response.
        let response = ConfigResponse {
            nonce: "1-1".into(),
            version: 7,
            full_snapshot: true,
            ..ConfigResponse::default()
        };
        let first = Encoded::response(&response, std::slice::from_ref(&a));
        let second = Encoded::response(&response, std::slice::from_ref(&b));
        assert_eq!(first.chunks[1].as_ptr(), a.as_ptr());
        assert_eq!(second.chunks[1].as_ptr(), a.as_ptr());

        // A later version is encoded anew.
        let c = cache.resources(8, &model, ResourceType::Workload, None);
        assert!(!Arc::ptr_eq(&a, &c));
        // Once nobody holds a version's encoding, it is gone.
        drop((a, b, first, second));
        assert_eq!(
            cache
                .entries
                .lock()
                .get(&(7, ResourceType::Workload))
                .map(Weak::strong_count),
            Some(0)
        );
        let d = cache.resources(7, &model, ResourceType::Workload, None);
        assert_eq!(Arc::strong_count(&d), 1);
    }

    fn bytes_len(e: &Encoded) -> usize {
        e.message().len()
    }

    #[test]
    fn trimmed_types_are_encoded_per_view() {
        let (model, cache) = (model(1), SnapshotCache::default());
        let view = Visible::default();
        let a = cache.resources(1, &model, ResourceType::Authorization, Some(&view));
        let b = cache.resources(1, &model, ResourceType::Authorization, Some(&view));
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn framed_response_decodes_as_the_plain_encoding() {
        let model = model(10);
        let cache = SnapshotCache::default();
        let shared: Vec<Arc<Bytes>> = [ResourceType::TrustBundle, ResourceType::Workload]
            .iter()
            .map(|t| cache.resources(3, &model, *t, None))
            .collect();
        let removed = vec![ResourceKey {
            r#type: ResourceType::Service as i32,
            key: "ns/gone".into(),
        }];
        let own = vec![Resource {
            kind: Some(resource::Kind::Workload(Workload {
                uid: "extra".into(),
                ..Workload::default()
            })),
        }];
        let response = ConfigResponse {
            nonce: "3-1".into(),
            version: 3,
            full_snapshot: true,
            resources: own.clone(),
            removed: removed.clone(),
        };
        let framed = Encoded::response(&response, &shared);
        let bytes = framed.message();
        let prefix: Vec<u8> = framed.chunks[0][1..5].to_vec();
        assert_eq!(
            u32::from_be_bytes(prefix.try_into().unwrap()) as usize,
            bytes.len()
        );
        let decoded = ConfigResponse::decode(bytes).unwrap();
        let mut resources: Vec<Resource> = [ResourceType::TrustBundle, ResourceType::Workload]
            .iter()
            .flat_map(|t| model.visible_resources(*t, None))
            .collect();
        resources.extend(own);
        let expected = ConfigResponse {
            resources,
            ..response
        };
        assert_eq!(decoded, expected);
        assert_eq!(bytes_len(&framed), expected.encoded_len());
    }
}
