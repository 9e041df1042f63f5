//! The installer keeps weft-cni's entry last in a conflist that another CNI
//! rewrites, and uninstall restores the file byte for byte. No root needed.

mod common;

use std::time::Duration;

use weft_node_agent::install::{ConfInstaller, PLUGIN_TYPE};
use weft_testkit::eventually;
#[test]
fn installer_survives_rewrite_and_uninstalls_byte_for_byte() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let netd = dir.path().join("net.d");
    std::fs::create_dir_all(&netd).expect("mkdir");
    let file = netd.join("10-flannel.conflist");
    let original = "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\", \"ipam\": {\"type\": \"host-local\"}},\n    {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}\n  ]\n}\n";
    std::fs::write(&file, original).expect("write");
    let installer = ConfInstaller::new(
        &netd,
        dir.path().join("state"),
        serde_json::json!({"agentSocket": "/x"}),
    );
    let count = || {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
                .unwrap_or_default();
        v["plugins"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["type"] == PLUGIN_TYPE).count())
            .unwrap_or(0)
    };
    let last_is_weft = || {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
                .unwrap_or_default();
        v["plugins"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(|p| p["type"] == PLUGIN_TYPE)
    };
    let task = rt.spawn(installer.clone().keep_installed(Duration::from_millis(50)));
    eventually(
        "weft-cni to be the chain's last plugin, once",
        Duration::from_secs(10),
        || count() == 1 && last_is_weft(),
    );

    // "Another CNI" rewrites its config: the entry is put back, once.
    let rewritten = original.replace("cbr0", "cbr1");
    std::fs::write(&file, &rewritten).expect("rewrite");
    eventually(
        "the entry to be put back, once",
        Duration::from_secs(10),
        || {
            count() == 1
                && std::fs::read_to_string(&file)
                    .unwrap_or_default()
                    .contains("cbr1")
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(), 1, "inserted more than once");

    task.abort();
    let _ = rt.block_on(task);
    installer.uninstall().expect("uninstall");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        rewritten,
        "not restored byte-for-byte"
    );
}
