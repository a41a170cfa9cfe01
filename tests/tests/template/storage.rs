//! Where data rests: every store encrypted with the stack's key, the table and bucket as the
//! store uses them, and the Athena tables reading exactly what the store writes.

use std::collections::BTreeSet;

use serde_json::Value;
use shared::domain::{
    BedrockAnalysis, EventType, EvolutionEvent, Role, StorageMetadata, SystemContext, SystemId,
};
use shared::store::{LlmCallRecord, Usage};

use super::cfn::{alternatives, statements, target, template, text};
use super::first;

#[test]
fn every_store_uses_the_stack_key() {
    let t = template();
    let (key, _) = first(t, "AWS::KMS::Key", "a KMS key");
    let uses_key = |value: &Value| target(value) == Some(key);
    let mut stores = 0;
    for (id, table) in t.of_type("AWS::DynamoDB::GlobalTable") {
        let p = &table["Properties"];
        assert_eq!(p["SSESpecification"]["SSEEnabled"], true, "{id}");
        assert_eq!(p["SSESpecification"]["SSEType"], "KMS", "{id}");
        let home = &p["Replicas"][0];
        assert_eq!(
            home["Region"]["Ref"], "AWS::Region",
            "{id}: the first replica is home"
        );
        assert!(
            uses_key(&home["SSESpecification"]["KMSMasterKeyId"]),
            "{id}"
        );
        for replica in alternatives(&p["Replicas"]) {
            assert_eq!(
                replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
                "{id}: every replica has point-in-time recovery"
            );
        }
        stores += 1;
    }
    for (id, bucket) in t.of_type("AWS::S3::Bucket") {
        let rule =
            &bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
        assert_eq!(
            rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"], "aws:kms",
            "{id}"
        );
        assert!(
            uses_key(&rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]),
            "{id}"
        );
        assert_eq!(rule["BucketKeyEnabled"], true, "{id}");
        stores += 1;
    }
    for (kind, property) in [
        ("AWS::SQS::Queue", "KmsMasterKeyId"),
        ("AWS::SNS::Topic", "KmsMasterKeyId"),
        ("AWS::Logs::LogGroup", "KmsKeyId"),
        ("AWS::Scheduler::Schedule", "KmsKeyArn"),
        ("AWS::SecretsManager::Secret", "KmsKeyId"),
    ] {
        for (id, resource) in t.of_type(kind) {
            assert!(
                uses_key(&resource["Properties"][property]),
                "{id}: {property}"
            );
            stores += 1;
        }
    }
    // 1 table, 2 buckets (the data's, the audit trail's), 14 queues, 2 topics, 6 + 1 log groups
    // (the functions', the worker's), 2 schedules, 1 secret.
    assert_eq!(stores, 1 + 2 + 14 + 2 + 7 + 2 + 1);
}

#[test]
fn the_table_matches_the_dynamo_store() {
    let t = template();
    let (id, table) = first(t, "AWS::DynamoDB::GlobalTable", "a global table");
    let p = &table["Properties"];
    assert_eq!(p["BillingMode"], "PAY_PER_REQUEST", "{id}");
    assert_eq!(
        p["KeySchema"],
        serde_json::json!([
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"}
        ])
    );
    assert_eq!(
        p["AttributeDefinitions"],
        serde_json::json!([
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"}
        ])
    );
    assert_eq!(
        p["TimeToLiveSpecification"],
        serde_json::json!({"AttributeName": "ttl", "Enabled": true})
    );
    assert!(
        p.get("GlobalSecondaryIndexes").is_none(),
        "the store queries no index"
    );
}

#[test]
fn the_bucket_is_private_versioned_tls_only_and_expires_event_bodies() {
    let t = template();
    let (id, bucket) = first(t, "AWS::S3::Bucket", "a bucket");
    let p = &bucket["Properties"];
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(p["PublicAccessBlockConfiguration"][flag], true, "{flag}");
    }
    let expiry = alternatives(&p["LifecycleConfiguration"]["Rules"])
        .into_iter()
        .find(|r| r.get("ExpirationInDays").is_some())
        .expect("an expiration rule");
    assert_eq!(
        target(&expiry["ExpirationInDays"]),
        Some("EventRetentionDays")
    );
    let (_, policy) = t
        .of_type("AWS::S3::BucketPolicy")
        .find(|(_, r)| target(&r["Properties"]["Bucket"]) == Some(id))
        .expect("a bucket policy");
    let tls = statements(&policy["Properties"]["PolicyDocument"])
        .into_iter()
        .find(|s| s["Effect"] == "Deny" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false")
        .expect("a TLS-only Deny");
    assert_eq!(tls["Principal"], "*");
}

/// The JSON field names a Glue table reads: each column (renamed back through the JSON SerDe's
/// `mapping.<column>` parameters) and, for `struct<...>` columns, their fields as
/// `column.field`.
fn glue_fields(table: &Value) -> BTreeSet<String> {
    let storage = &table["Properties"]["TableInput"]["StorageDescriptor"];
    let mappings = &storage["SerdeInfo"]["Parameters"];
    let mut fields = BTreeSet::new();
    for column in alternatives(&storage["Columns"]) {
        let name = column["Name"].as_str().expect("column name");
        let json = mappings[format!("mapping.{name}")]
            .as_str()
            .unwrap_or(name)
            .to_owned();
        let kind = column["Type"].as_str().expect("column type");
        if let Some(inner) = kind
            .strip_prefix("struct<")
            .and_then(|k| k.strip_suffix('>'))
        {
            for field in inner.split(',') {
                let (field, _) = field.split_once(':').expect("field:type");
                fields.insert(format!("{json}.{field}"));
            }
        }
        fields.insert(json);
    }
    fields
}

/// The field names of a record's JSON, nested objects as `field.inner`.
fn json_fields(value: &Value) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for (name, inner) in value.as_object().expect("a JSON object") {
        if let Some(object) = inner.as_object() {
            for field in object.keys() {
                fields.insert(format!("{name}.{field}"));
            }
        }
        fields.insert(name.clone());
    }
    fields
}

/// One record of each kind the store writes to the bucket, every optional field set so that
/// every field the store can write shows.
fn written_records() -> (EvolutionEvent, LlmCallRecord) {
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let event = EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: "evt-1".into(),
        timestamp: at,
        event_type: EventType::MutationKept,
        generation: 3,
        fitness_delta: Some(0.1),
        mutation_id: Some("mut-1".into()),
        bedrock_analysis: Some(BedrockAnalysis {
            model_used: "m".into(),
            confidence: 0.5,
            reasoning: "r".into(),
            predicted_impact: 0.1,
            actual_impact: 0.1,
        }),
        system_context: Some(SystemContext {
            cpu_usage: 0.1,
            memory_usage: 0.1,
            active_processes: 1,
            recent_errors: 0,
        }),
        storage_metadata: Some(StorageMetadata {
            s3_location: "s3://b/k".into(),
            size_bytes: 1,
            storage_class: "STANDARD".into(),
        }),
        system_id: Some(SystemId::parse("checkout-api").expect("id")),
        detail: Some("d".into()),
    };
    let call = LlmCallRecord {
        trace_id: None,
        call_id: "c".into(),
        system_id: SystemId::parse("checkout-api").expect("id"),
        envelope_id: "e".into(),
        role: Role::Decide,
        model_id: "m".into(),
        usage: Usage::default(),
        cost_nano_usd: 1,
        latency_ms: 1,
        bedrock_requests: 1,
        fallback: Some("throttled".into()),
        cache_hit: true,
        at,
    };
    (event, call)
}

#[test]
fn the_athena_tables_read_exactly_what_the_store_writes_where_it_writes_it() {
    let t = template();
    let (event, call) = written_records();
    let (bucket, _) = first(t, "AWS::S3::Bucket", "bucket");
    let mut tables = 0;
    for (id, table) in t.of_type("AWS::Glue::Table") {
        let input = &table["Properties"]["TableInput"];
        let storage = &input["StorageDescriptor"];
        assert_eq!(
            storage["SerdeInfo"]["SerializationLibrary"], "org.openx.data.jsonserde.JsonSerDe",
            "{id}"
        );
        assert_eq!(input["Parameters"]["projection.enabled"], "true", "{id}");
        let template_path =
            text(&input["Parameters"]["storage.location.template"]).expect("a location template");
        let location = text(&storage["Location"]).expect("a location");
        assert!(
            template_path.starts_with(location),
            "{id}: {template_path} under {location}"
        );
        assert!(
            location.starts_with(&format!("s3://${{{bucket}}}/")),
            "{id}: {location}"
        );
        for partition in alternatives(&input["PartitionKeys"]) {
            let name = partition["Name"].as_str().expect("partition name");
            assert!(
                input["Parameters"][format!("projection.{name}.type")].is_string(),
                "{id}: {name} is projected"
            );
            assert!(
                template_path.contains(&format!("${{!{name}}}")),
                "{id}: {name} in the location template"
            );
        }
        let (written, expected_path) = match input["Name"].as_str() {
            Some("evolution_events") => (
                serde_json::to_value(&event).expect("event JSON"),
                "s3://${Bucket}/evolution-events/system=${!system}/${!year}/${!month}/",
            ),
            Some("llm_calls") => (
                serde_json::to_value(&call).expect("call JSON"),
                "s3://${Bucket}/llm-calls/year=${!year}/month=${!month}/",
            ),
            other => panic!("{id}: unexpected table {other:?}"),
        };
        assert_eq!(template_path, expected_path, "{id}");
        assert_eq!(glue_fields(table), json_fields(&written), "{id}: columns");
        tables += 1;
    }
    assert_eq!(tables, 2);
    let (id, workgroup) = first(t, "AWS::Athena::WorkGroup", "an Athena workgroup");
    let results = &workgroup["Properties"]["WorkGroupConfiguration"]["ResultConfiguration"];
    assert_eq!(
        results["EncryptionConfiguration"]["EncryptionOption"], "SSE_KMS",
        "{id}"
    );
    let (key, _) = first(t, "AWS::KMS::Key", "key");
    assert_eq!(
        target(&results["EncryptionConfiguration"]["KmsKey"]),
        Some(key),
        "{id}"
    );
}
