//! The bill's daily reconciliation as deployed: cost-guard alone may read the bill (one Cost
//! Explorer action, on `'*'` since it has no resources), and its threshold and hour are
//! parameters passed to it under the names its config reads, with the code's defaults.

use serde_json::Value;
use shared::cost::reconcile::{DEFAULT_HOUR_UTC, DEFAULT_THRESHOLD_BP};
use shared::lambda::config::{RECONCILE_HOUR_UTC, RECONCILE_THRESHOLD_BP};

use super::cfn::{actions, resources_of, target, template};
use super::{every_statement, functions, role_of, variables_of};

const ACTION: &str = "ce:GetCostAndUsage";

#[test]
fn cost_guard_alone_may_read_the_bill_and_nothing_else_of_cost_explorer() {
    let t = template();
    let (_, _, cost_guard) = functions(t)
        .into_iter()
        .find(|(package, _, _)| *package == "cost-guard")
        .expect("the cost-guard function");
    let role = role_of(cost_guard);
    let mut readers = Vec::new();
    for (id, _, statement) in every_statement(t) {
        let ce: Vec<&str> = actions(statement)
            .into_iter()
            .filter(|a| a.starts_with("ce:"))
            .collect();
        if ce.is_empty() {
            continue;
        }
        assert_eq!(ce, [ACTION], "{id}: {ce:?}");
        assert_eq!(statement["Effect"], "Allow", "{id}");
        assert_eq!(actions(statement), [ACTION], "{id}: one action alone");
        let resources: Vec<&Value> = resources_of(statement);
        assert_eq!(resources, [&Value::from("*")], "{id}: no resource to name");
        readers.push(id);
    }
    assert_eq!(readers, [role], "only cost-guard's role reads the bill");
    let comment = t
        .text
        .lines()
        .skip_while(|l| !l.contains("Sid: ReadsTheBill"))
        .find(|l| l.trim_start().starts_with("Resource: '*'"))
        .and_then(|l| l.split_once('#'))
        .map(|(_, why)| why.trim());
    assert_eq!(
        comment,
        Some("ce:GetCostAndUsage has no resource-level permissions")
    );
}

#[test]
fn the_threshold_and_hour_are_parameters_with_the_codes_defaults() {
    let t = template();
    let threshold = t.parameter("ReconcileThresholdBp");
    assert_eq!(threshold["Default"], DEFAULT_THRESHOLD_BP.to_string());
    assert_eq!(
        threshold["AllowedPattern"], "^[0-9]*$",
        "whole basis points, or empty to turn it off"
    );
    let hour = t.parameter("ReconcileHourUtc");
    assert_eq!(hour["Default"], DEFAULT_HOUR_UTC);
    assert_eq!(
        (hour["MinValue"].as_u64(), hour["MaxValue"].as_u64()),
        (Some(0), Some(23))
    );

    let (_, _, cost_guard) = functions(t)
        .into_iter()
        .find(|(package, _, _)| *package == "cost-guard")
        .expect("the cost-guard function");
    let env = &cost_guard["Properties"]["Environment"]["Variables"];
    assert_eq!(
        target(&env[RECONCILE_THRESHOLD_BP]),
        Some("ReconcileThresholdBp")
    );
    assert_eq!(target(&env[RECONCILE_HOUR_UTC]), Some("ReconcileHourUtc"));
    for variable in [RECONCILE_THRESHOLD_BP, RECONCILE_HOUR_UTC] {
        assert!(variables_of("cost-guard").contains(&variable));
        for (package, id, function) in functions(t) {
            if package != "cost-guard" {
                let vars = &function["Properties"]["Environment"]["Variables"];
                assert!(vars.get(variable).is_none(), "{id} has {variable}");
            }
        }
    }
}
