//! The optional audit trail: off by default; on, a CloudTrail trail logs the data events of
//! exactly the stack's table and bucket (and the management events that carry the webhook
//! secret's reads), encrypted with the stack's key, with validated log files, into a bucket of
//! its own that only this trail may write to.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::cfn::{
    Template, actions, alternatives, resources_of, statements, target, template, text,
};
use super::first;

const PARAMETER: &str = "AuditTrail";
const CONDITION: &str = "AuditTrailEnabled";
const CLOUDTRAIL: &str = "cloudtrail.amazonaws.com";

/// The trail, `(logical id, resource)`.
fn trail(t: &Template) -> (&str, &Value) {
    first(t, "AWS::CloudTrail::Trail", "an audit trail")
}

/// The logical id of the stack's data bucket (the one the store writes to, an output).
fn data_bucket(t: &Template) -> &str {
    target(&t.root["Outputs"]["BucketName"]["Value"]).expect("the data bucket output")
}

/// The logical id of the trail's bucket.
fn trail_bucket(t: &Template) -> &str {
    let (_, trail) = trail(t);
    target(&trail["Properties"]["S3BucketName"]).expect("the trail's bucket is the template's")
}

/// The ARN every statement for CloudTrail must be conditioned on: the trail's own.
fn trail_arn(t: &Template) -> String {
    let (_, trail) = trail(t);
    let name = text(&trail["Properties"]["TrailName"]).expect("a trail name");
    format!("arn:${{AWS::Partition}}:cloudtrail:${{AWS::Region}}:${{AWS::AccountId}}:trail/{name}")
}

/// The `aws:SourceArn` a statement's `StringEquals` names, as written.
fn source_arn(statement: &Value) -> Option<&str> {
    text(&statement["Condition"]["StringEquals"]["aws:SourceArn"])
}

/// One advanced event selector as its field selectors: `(field, operator, values as JSON)`.
type Selector = BTreeSet<(String, String, String)>;

fn selector(fields: &[(&str, &str, Value)]) -> Selector {
    fields
        .iter()
        .map(|(field, operator, values)| {
            (
                (*field).to_owned(),
                (*operator).to_owned(),
                values.to_string(),
            )
        })
        .collect()
}

/// The trail's advanced event selectors.
fn selectors(trail: &Value) -> BTreeSet<Selector> {
    alternatives(&trail["Properties"]["AdvancedEventSelectors"])
        .into_iter()
        .map(|s| {
            alternatives(&s["FieldSelectors"])
                .into_iter()
                .flat_map(|f| {
                    let field = f["Field"].as_str().expect("a field");
                    f.as_object()
                        .expect("a field selector")
                        .iter()
                        .filter(|(k, _)| *k != "Field")
                        .map(move |(op, values)| (field.to_owned(), op.clone(), values.to_string()))
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_audit_trail_is_a_parameter_off_by_default() {
    let t = template();
    let parameter = t.parameter(PARAMETER);
    assert_eq!(parameter["Default"], "Disabled");
    assert_eq!(parameter["AllowedValues"], json!(["Enabled", "Disabled"]));
    assert_eq!(
        t.root["Conditions"][CONDITION],
        json!({"Fn::Equals": [{"Ref": PARAMETER}, "Enabled"]})
    );
    let bucket = trail_bucket(t);
    let (trail_id, _) = trail(t);
    let (policy, _) = bucket_policy(t, bucket);
    for id in [trail_id, bucket, policy] {
        assert_eq!(t.resource(id)["Condition"], CONDITION, "{id}");
    }
    // The key lets CloudTrail in only with the trail.
    let (key, _) = first(t, "AWS::KMS::Key", "key");
    let for_cloudtrail = t.resource(key)["Properties"]["KeyPolicy"]["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Fn::If"][1]["Principal"]["Service"] == CLOUDTRAIL)
        .expect("a conditional key statement for CloudTrail");
    assert_eq!(for_cloudtrail["Fn::If"][0], CONDITION);
}

#[test]
fn the_trail_logs_data_events_of_exactly_the_table_and_the_bucket() {
    let t = template();
    let (table, _) = first(t, "AWS::DynamoDB::GlobalTable", "the table");
    let bucket = data_bucket(t);
    let (id, trail) = trail(t);
    assert!(
        trail["Properties"].get("EventSelectors").is_none(),
        "{id}: advanced event selectors only"
    );
    // The webhook secret's reads and writes are management events: logged read and write (no
    // readOnly filter), with only KMS's own left out.
    let expected = BTreeSet::from([
        selector(&[
            ("eventCategory", "Equals", json!(["Management"])),
            ("eventSource", "NotEquals", json!(["kms.amazonaws.com"])),
        ]),
        selector(&[
            ("eventCategory", "Equals", json!(["Data"])),
            ("resources.type", "Equals", json!(["AWS::DynamoDB::Table"])),
            (
                "resources.ARN",
                "Equals",
                json!([{"Fn::GetAtt": [table, "Arn"]}]),
            ),
        ]),
        selector(&[
            ("eventCategory", "Equals", json!(["Data"])),
            ("resources.type", "Equals", json!(["AWS::S3::Object"])),
            (
                "resources.ARN",
                "StartsWith",
                json!([{"Fn::Sub": format!("${{{bucket}.Arn}}/")}]),
            ),
        ]),
    ]);
    assert_eq!(selectors(trail), expected, "{id}: event selectors");
}

#[test]
fn the_trail_is_encrypted_validates_its_files_and_writes_to_its_own_bucket() {
    let t = template();
    let (key, _) = first(t, "AWS::KMS::Key", "key");
    let (id, trail) = trail(t);
    let p = &trail["Properties"];
    assert_eq!(p["IsLogging"], true, "{id}");
    assert_eq!(p["EnableLogFileValidation"], true, "{id}");
    assert_eq!(target(&p["KMSKeyId"]), Some(key), "{id}: encrypted");
    let bucket = trail_bucket(t);
    assert_ne!(bucket, data_bucket(t), "{id}: a bucket of its own");
    let b = &t.resource(bucket)["Properties"];
    assert_eq!(b["VersioningConfiguration"]["Status"], "Enabled");
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(b["PublicAccessBlockConfiguration"][flag], true, "{flag}");
    }
    let sse = &b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
    assert_eq!(
        sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"],
        "aws:kms"
    );
    assert_eq!(
        target(&sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]),
        Some(key)
    );
    let (policy, _) = bucket_policy(t, bucket);
    assert!(
        alternatives(&t.resource(id)["DependsOn"]).contains(&&json!(policy)),
        "{id}: created once CloudTrail may write"
    );
    // The key lets CloudTrail encrypt for this trail alone.
    let for_cloudtrail: Vec<&Value> = statements(&t.resource(key)["Properties"]["KeyPolicy"])
        .into_iter()
        .filter(|s| s["Principal"]["Service"] == CLOUDTRAIL)
        .collect();
    assert_eq!(for_cloudtrail.len(), 1);
    let statement = for_cloudtrail[0];
    assert_eq!(
        actions(statement),
        ["kms:GenerateDataKey", "kms:DescribeKey"]
    );
    assert_eq!(source_arn(statement), Some(trail_arn(t).as_str()));
}

/// The policy of `bucket`: `(logical id, policy document)`.
fn bucket_policy<'a>(t: &'a Template, bucket: &str) -> (&'a str, &'a Value) {
    let Some((id, policy)) = t
        .of_type("AWS::S3::BucketPolicy")
        .find(|(_, r)| target(&r["Properties"]["Bucket"]) == Some(bucket))
    else {
        panic!("no policy for {bucket}")
    };
    (id, &policy["Properties"]["PolicyDocument"])
}

#[test]
fn only_this_trail_writes_to_the_audit_bucket_and_only_over_tls() {
    let t = template();
    let bucket = trail_bucket(t);
    let (id, document) = bucket_policy(t, bucket);
    let trail_arn = trail_arn(t);
    let mut allowed = BTreeSet::new();
    for statement in statements(document) {
        if statement["Effect"] == "Deny" {
            continue;
        }
        assert_eq!(
            statement["Principal"],
            json!({"Service": CLOUDTRAIL}),
            "{id}: CloudTrail alone is allowed"
        );
        assert_eq!(
            source_arn(statement),
            Some(trail_arn.as_str()),
            "{id}: for this trail only"
        );
        for action in actions(statement) {
            for resource in resources_of(statement) {
                allowed.insert((action.to_owned(), resource.to_string()));
            }
        }
    }
    assert_eq!(
        allowed,
        BTreeSet::from([
            (
                "s3:GetBucketAcl".to_owned(),
                json!({"Fn::GetAtt": [bucket, "Arn"]}).to_string()
            ),
            (
                "s3:PutObject".to_owned(),
                json!({"Fn::Sub": format!("${{{bucket}.Arn}}/AWSLogs/${{AWS::AccountId}}/*")})
                    .to_string()
            ),
        ]),
        "{id}"
    );
    let tls = statements(document)
        .into_iter()
        .find(|s| s["Effect"] == "Deny" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false")
        .unwrap_or_else(|| panic!("{id}: a TLS-only Deny"));
    assert_eq!(tls["Principal"], "*");
}
