//! `weftctl enroll NS` / `unenroll NS`: the namespace's
//! `weft.dev/dataplane-mode` label. The node agents see the change and
//! redirect (or release) the namespace's running pods; nothing restarts.

use weft_cluster::model::labels::{DATAPLANE_AMBIENT, DATAPLANE_MODE};

use crate::args::{GlobalArgs, NamespaceArg};
use crate::cluster::Cluster;
use crate::exit::{Outcome, Result};
use crate::output;

/// Runs `enroll` (`enroll = true`) or `unenroll`.
pub async fn run(global: &GlobalArgs, args: &NamespaceArg, enroll: bool) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let value = enroll.then_some(DATAPLANE_AMBIENT);
    cluster
        .label_namespace(&args.namespace, DATAPLANE_MODE, value)
        .await?;
    let message = if enroll {
        format!(
            "namespace/{} enrolled ({DATAPLANE_MODE}={DATAPLANE_AMBIENT}); its pods are redirected into the mesh as the node agents see the change\n",
            args.namespace
        )
    } else {
        format!(
            "namespace/{} unenrolled ({DATAPLANE_MODE} removed); pods that carry their own label keep it\n",
            args.namespace
        )
    };
    output::print(&message);
    Ok(Outcome::Ok)
}
