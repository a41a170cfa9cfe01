//! Identity policies: no wildcard actions, `Resource: '*'` only where AWS requires it, and each
//! function's role sending, publishing, reading and invoking models exactly where its
//! environment and config say.

use std::collections::BTreeSet;

use serde_json::Value;
use shared::llm::catalog::{Invocation, ModelCatalog};

use super::cfn::{actions, resources_of, template, text};
use super::{
    calls_llm, consumed_queues, destinations, every_statement, first, functions, granted, role_of,
    role_statements,
};

/// The only statements that may say `Resource: '*'`, each with the reason (the template carries
/// the same reason as a comment on each such line).
const STAR_RESOURCES: &[(&str, &str, &str)] = &[
    ("Key", "AccountAdministersAndDelegatesToIam", KEY_POLICY),
    ("Key", "FunctionsThroughStackServices", KEY_POLICY),
    ("Key", "CloudWatchLogsEncryptsTheFunctionLogs", KEY_POLICY),
    (
        "Key",
        "CloudWatchAlarmsPublishToTheEncryptedAlertsTopic",
        KEY_POLICY,
    ),
    ("Key", "SchedulerDecryptsTheScheduleInput", KEY_POLICY),
    (
        "Key",
        "AlertsTopicDeliversToTheEncryptedNotifyQueue",
        KEY_POLICY,
    ),
    ("Key", "RunningSystemSendsFitnessThroughSqs", KEY_POLICY),
    ("Key", "OperatorsSendThroughSqs", KEY_POLICY),
    ("Key", "AuditTrailEncryptsItsLogs", KEY_POLICY),
    ("WorkerExecutionRole", "EcrToken", ECR_TOKEN),
    ("CostGuardFunctionRole", "ReadsTheBill", COST_EXPLORER),
    ("TraceWrite", "WritesTraces", XRAY_WRITES),
];
const XRAY_WRITES: &str = "the X-Ray writes have no resource-level permissions";
const COST_EXPLORER: &str = "ce:GetCostAndUsage has no resource-level permissions";
const KEY_POLICY: &str = "a key policy names its own key as '*'";
const ECR_TOKEN: &str = "ecr:GetAuthorizationToken has no resource-level permissions";

/// The only statements whose actions may hold a wildcard: Denies, which only take away.
const WILDCARD_DENIES: &[(&str, &str, &str)] = &[
    (
        "BucketPolicy",
        "DenyRequestsWithoutTls",
        "AWS Config's s3-bucket-ssl-requests-only expects s3:* in the TLS Deny",
    ),
    (
        "TrailBucketPolicy",
        "DenyRequestsWithoutTls",
        "AWS Config's s3-bucket-ssl-requests-only expects s3:* in the TLS Deny",
    ),
];

/// `(logical id, Sid)` of each statement an allow-list of `(logical id, Sid, reason)` names.
fn allow_listed(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(id, sid, _)| ((*id).to_owned(), (*sid).to_owned()))
        .collect()
}

/// Whether a statement says `Resource: '*'`.
fn names_every_resource(statement: &Value) -> bool {
    resources_of(statement).iter().any(|r| *r == "*")
}

#[test]
fn no_allow_statement_has_a_wildcard_action() {
    let t = template();
    let mut denies = BTreeSet::new();
    for (id, path, statement) in every_statement(t) {
        let sid = statement["Sid"].as_str().unwrap_or("");
        assert!(
            statement.get("NotAction").is_none(),
            "{id} {path} {sid}: NotAction"
        );
        let wild: Vec<&str> = actions(statement)
            .into_iter()
            .filter(|a| a.contains('*'))
            .collect();
        if wild.is_empty() {
            continue;
        }
        assert_eq!(
            statement["Effect"], "Deny",
            "{id} {path} {sid}: wildcard actions {wild:?}"
        );
        denies.insert((id.to_owned(), sid.to_owned()));
    }
    let allowed = allow_listed(WILDCARD_DENIES);
    assert_eq!(denies, allowed, "wildcard Denies outside the allow-list");
}

#[test]
fn resource_star_appears_only_where_aws_requires_it_and_says_why() {
    let t = template();
    let mut found = BTreeSet::new();
    for (id, _, statement) in every_statement(t) {
        if names_every_resource(statement) {
            let sid = statement["Sid"].as_str().unwrap_or("");
            found.insert((id.to_owned(), sid.to_owned()));
        }
    }
    let allowed = allow_listed(STAR_RESOURCES);
    assert_eq!(found, allowed, "Resource '*' outside the allow-list");
    // Each such line carries its reason as a comment.
    let lines: Vec<&str> = t
        .text
        .lines()
        .filter(|l| l.trim_start().starts_with("Resource: '*'"))
        .collect();
    assert_eq!(lines.len(), STAR_RESOURCES.len());
    for line in lines {
        let comment = line.split_once('#').map(|(_, c)| c.trim());
        assert!(
            STAR_RESOURCES
                .iter()
                .any(|(_, _, why)| comment == Some(*why)),
            "{line}"
        );
    }
    // Identity policies (roles and managed policies) never use '*', but for the actions that
    // have no resource to name.
    for (id, _, statement) in every_statement(t) {
        let kind = t.resource(id)["Type"].as_str().unwrap_or("");
        let identity = kind == "AWS::IAM::Role" || kind == "AWS::IAM::ManagedPolicy";
        if identity && names_every_resource(statement) {
            let found = (id, statement["Sid"].as_str(), actions(statement));
            assert!(
                found
                    == (
                        "WorkerExecutionRole",
                        Some("EcrToken"),
                        vec!["ecr:GetAuthorizationToken"]
                    )
                    || found
                        == (
                            "CostGuardFunctionRole",
                            Some("ReadsTheBill"),
                            vec!["ce:GetCostAndUsage"]
                        )
                    || found
                        == (
                            "TraceWrite",
                            Some("WritesTraces"),
                            vec!["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
                        ),
                "{found:?}"
            );
        }
    }
}

#[test]
fn roles_send_and_publish_exactly_where_the_environment_points() {
    let t = template();
    let consumed = consumed_queues(t);
    for (package, id, function) in functions(t) {
        let role = role_of(function);
        let (sends, publishes) = destinations(function);
        assert_eq!(
            granted(t, role, "sqs:SendMessage"),
            sends,
            "{id}: sqs:SendMessage"
        );
        assert_eq!(
            granted(t, role, "sns:Publish"),
            publishes,
            "{id}: sns:Publish"
        );
        let own: BTreeSet<String> = consumed
            .iter()
            .filter(|(_, p, _)| *p == package)
            .map(|(q, _, _)| q.clone())
            .collect();
        for action in [
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
        ] {
            assert_eq!(granted(t, role, action), own, "{id}: {action}");
        }
        let (table, _) = first(t, "AWS::DynamoDB::GlobalTable", "table");
        // notify only claims and completes its idempotency records: no queries.
        let table_actions: &[&str] = if package == "notify" {
            &[
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ]
        } else {
            &[
                "dynamodb:GetItem",
                "dynamodb:Query",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ]
        };
        for &action in table_actions {
            assert_eq!(
                granted(t, role, action),
                BTreeSet::from([table.to_owned()]),
                "{id}: {action}"
            );
        }
        assert!(
            granted(t, role, "dynamodb:BatchWriteItem").is_empty()
                && granted(t, role, "dynamodb:Scan").is_empty(),
            "{id}: no bulk writes or scans"
        );
        let (key, _) = first(t, "AWS::KMS::Key", "key");
        for action in ["kms:Decrypt", "kms:GenerateDataKey"] {
            assert_eq!(
                granted(t, role, action),
                BTreeSet::from([key.to_owned()]),
                "{id}: {action}"
            );
        }
    }
}

#[test]
fn bedrock_grants_cover_exactly_the_usable_catalog() {
    let catalog = ModelCatalog::embedded().expect("the embedded catalog");
    let mut expected = BTreeSet::new();
    for model in catalog.usable() {
        match model.invocation {
            Invocation::InferenceProfile => {
                expected.insert(format!(
                    "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}:${{AWS::AccountId}}:inference-profile/{}",
                    model.id
                ));
                for region in &model.regions {
                    expected.insert(format!(
                        "arn:${{AWS::Partition}}:bedrock:{region}::foundation-model/{}",
                        model.base_model_id
                    ));
                }
                if model.id.starts_with("global.") {
                    expected.insert(format!(
                        "arn:${{AWS::Partition}}:bedrock:::foundation-model/{}",
                        model.base_model_id
                    ));
                }
            }
            Invocation::OnDemand => {
                expected.insert(format!(
                    "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}::foundation-model/{}",
                    model.id
                ));
            }
        }
    }
    assert!(!expected.is_empty());
    let t = template();
    for (package, id, function) in functions(t) {
        let role = role_of(function);
        let granted: BTreeSet<String> = role_statements(t, role)
            .into_iter()
            .filter(|s| {
                s["Effect"] == "Allow" && actions(s).iter().any(|a| a.starts_with("bedrock:"))
            })
            .flat_map(|s| {
                assert_eq!(
                    actions(s),
                    ["bedrock:InvokeModel"],
                    "{id}: Converse needs InvokeModel only"
                );
                resources_of(s)
            })
            .map(|r| text(r).expect("an ARN").to_owned())
            .collect();
        if calls_llm(package) {
            assert_eq!(granted, expected, "{id}: bedrock:InvokeModel resources");
        } else {
            assert!(granted.is_empty(), "{id} calls no model");
        }
    }
}
