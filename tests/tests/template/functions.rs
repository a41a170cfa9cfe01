//! Each function as deployed: a Rust arm64 Lambda built from its own crate, with exactly the
//! environment its config type reads.

use std::collections::BTreeSet;

use super::cfn::{self, target, template};
use super::role_of;
use super::{functions, variables_of};

#[test]
fn each_function_is_a_rust_arm64_lambda_built_with_cargo_lambda() {
    let t = template();
    for (package, id, function) in functions(t) {
        let p = &function["Properties"];
        assert_eq!(p["Runtime"], "provided.al2023", "{id}");
        assert_eq!(p["Architectures"], serde_json::json!(["arm64"]), "{id}");
        assert_eq!(p["Handler"], "bootstrap", "{id}");
        assert_eq!(
            function["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{id}"
        );
        assert_eq!(
            function["Metadata"]["BuildProperties"]["Binary"], package,
            "{id}"
        );
        assert!(
            cfn::repo_root()
                .join("functions")
                .join(package)
                .join("Cargo.toml")
                .is_file(),
            "{id}: CodeUri does not point at a crate"
        );
        assert!(
            target(&p["MemorySize"]).is_some(),
            "{id}: MemorySize is a parameter"
        );
        assert!(
            target(&p["Timeout"]).is_some(),
            "{id}: Timeout is a parameter"
        );
        assert!(
            p.get("ReservedConcurrentExecutions").is_none(),
            "{id}: concurrency is capped on the event source mappings"
        );
        assert_eq!(p["LoggingConfig"]["LogFormat"], "JSON", "{id}");
        let group = target(&p["LoggingConfig"]["LogGroup"]).expect("own log group");
        let group = &t.resource(group)["Properties"];
        assert_eq!(
            target(&group["RetentionInDays"]),
            Some("LogRetentionDays"),
            "{id}"
        );
    }
}

#[test]
fn each_function_environment_is_exactly_what_its_config_reads() {
    let t = template();
    for (package, id, function) in functions(t) {
        let variables: BTreeSet<&str> = function["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap_or_else(|| panic!("{id} has no environment variables"))
            .keys()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = variables_of(package).iter().copied().collect();
        assert_eq!(
            variables, expected,
            "{id}: Environment.Variables must equal the config type's VARIABLES"
        );
    }
}

/// docs/architecture.md, "Tracing": every function records its segments in X-Ray, so the
/// trace a message's `AWSTraceHeader` names shows the invocations that handled it.
#[test]
fn every_function_traces_actively_and_may_write_its_segments() {
    let t = template();
    assert_eq!(t.root["Globals"]["Function"]["Tracing"], "Active");
    let functions = functions(t);
    assert!(functions.len() >= 6);
    for (_, id, function) in functions {
        let tracing = &function["Properties"]["Tracing"];
        assert!(
            tracing.is_null() || *tracing == "Active",
            "{id} overrides the global tracing with {tracing}"
        );
        let role = t.resource(role_of(function));
        let managed = role["Properties"]["ManagedPolicyArns"]
            .as_array()
            .map(|a| a.iter().filter_map(target).collect::<Vec<_>>())
            .unwrap_or_default();
        assert!(managed.contains(&"TraceWrite"), "{id}: {managed:?}");
    }
}
