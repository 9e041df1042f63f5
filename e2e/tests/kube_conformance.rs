//! The Gateway API conformance suite's mesh profiles against weft on the
//! real control plane (docs/conformance.md): the suite, built unmodified
//! from its Go module at the release of the installed CRDs, deploys its echo
//! backends into two namespaces enrolled and bound to a waypoint each, and
//! runs every test of MESH-HTTP and MESH-GRPC for the features weft claims.
//! Every test run must pass; the report it writes is checked against the
//! claim and, with `WEFT_CONFORMANCE_REPORT=<path>` (`make conformance`),
//! kept there for docs/. Needs root.

mod common;

use weft_e2e::kube::conformance::{self, FEATURES, PROFILES};
use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};

#[test]
fn the_gateway_api_mesh_conformance_suite_passes_for_every_claimed_feature() {
    let _one = common::serial();
    // Built (minutes on a cold machine) before there is a cluster to idle.
    let built = conformance::built().expect("conformance suite built");
    let echo = conformance::echo_image(&built).expect("echo image");
    let cluster = KubeCluster::up(KubeClusterConfig {
        images: vec![echo],
        ..KubeClusterConfig::default()
    })
    .expect("kube cluster up");
    let plane = cluster.control_plane();
    install::weft(plane).expect("install weft with kubectl");
    if let Err(e) = install::rolled_out(plane, 120) {
        cluster.print_logs();
        panic!("weft rolls out: {e}");
    }
    if let Err(e) = conformance::prepare(&cluster) {
        cluster.print_logs();
        panic!("mesh namespaces with their waypoints: {e}");
    }

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    let run = conformance::run(&cluster, &out, &[]).expect("the suite runs and reports");
    if let Some(path) = std::env::var_os("WEFT_CONFORMANCE_REPORT") {
        std::fs::write(&path, &run.report_text).expect("keep the report");
    }
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with("--- FAIL"))
        .collect();
    if !run.passed || !failed.is_empty() {
        cluster.print_logs();
        eprintln!("{}", weft_e2e::process::log_tail(&run.log, 400));
        panic!(
            "the suite failed ({} lines of its log above, all in {}): {failed:#?}",
            400,
            run.log.display()
        );
    }

    let report = &run.report;
    assert_eq!(
        report.gateway_api_channel, "standard",
        "{}",
        run.report_text
    );
    let profiles: Vec<&str> = report.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(profiles.len(), PROFILES.len(), "{}", run.report_text);
    for profile in &report.profiles {
        assert!(
            PROFILES.contains(&profile.name.as_str()),
            "{}",
            run.report_text
        );
        let core = &profile.core;
        assert_eq!(
            core.result, "success",
            "{}: {}",
            profile.name, run.report_text
        );
        assert!(core.statistics.passed > 0, "{}", run.report_text);
        assert_eq!(core.statistics.failed, 0, "{}", run.report_text);
        assert_eq!(core.statistics.skipped, 0, "{}", run.report_text);
        if let Some(extended) = &profile.extended {
            assert_eq!(extended.result, "success", "{}", run.report_text);
            assert_eq!(extended.statistics.failed, 0, "{}", run.report_text);
            assert_eq!(extended.statistics.skipped, 0, "{}", run.report_text);
            for feature in &extended.supported_features {
                assert!(
                    FEATURES.contains(&feature.as_str()),
                    "{feature} reported as supported but not claimed"
                );
            }
        }
    }
    eprintln!("{}", run.report_text);
}
