//! The bucket's replication to the replica regions: what a region the writer moves to needs
//! (docs/architecture.md, "Region failover").

use serde_json::Value;

use super::cfn::{actions, alternatives, resources_of, statements, target, template};

/// `(index, list parameter)` of `!Select [i, !Split [',', !Sub '${List},,']]`.
fn slot(value: &Value) -> Option<(u64, &str)> {
    let select = value.get("Fn::Select")?.as_array()?;
    let index = select.first()?.as_u64()?;
    let list = select
        .get(1)?
        .get("Fn::Split")?
        .get(1)?
        .get("Fn::Sub")?
        .as_str()?;
    let parameter = list.strip_prefix("${")?.strip_suffix("},,")?;
    Some((index, parameter))
}

#[test]
fn the_bucket_replicates_everything_to_each_replica_region_encrypted_there() {
    let t = template();
    assert_eq!(
        t.parameter("ReplicaBucketArns")["Default"],
        "",
        "off by default"
    );
    let bucket = &t.resource("Bucket")["Properties"];
    assert_eq!(
        bucket["VersioningConfiguration"]["Status"], "Enabled",
        "replication needs versioning"
    );
    let branches = bucket["ReplicationConfiguration"]["Fn::If"]
        .as_array()
        .expect("replication is conditional");
    assert_eq!(branches[0], "HasBucketReplica1");
    let replication = &branches[1];
    assert_eq!(target(&replication["Role"]), Some("BucketReplicationRole"));
    let rules = alternatives(&replication["Rules"]);
    assert_eq!(rules.len(), 2, "one rule per replica slot");
    for (i, rule) in rules.iter().enumerate() {
        let i = i as u64;
        assert_eq!(rule["Status"], "Enabled");
        assert_eq!(
            rule["Filter"]["Prefix"], "",
            "every object: event bodies and the call archive"
        );
        assert_eq!(rule["DeleteMarkerReplication"]["Status"], "Enabled");
        assert_eq!(
            rule["SourceSelectionCriteria"]["SseKmsEncryptedObjects"]["Status"], "Enabled",
            "the bucket's objects are KMS-encrypted: without this none replicates"
        );
        let destination = &rule["Destination"];
        assert_eq!(slot(&destination["Bucket"]), Some((i, "ReplicaBucketArns")));
        assert_eq!(
            slot(&destination["EncryptionConfiguration"]["ReplicaKmsKeyID"]),
            Some((i, "ReplicaKeyArns")),
            "encrypted with the key of the same region"
        );
        assert_eq!(destination["ReplicationTime"]["Status"], "Enabled");
        assert_eq!(destination["Metrics"]["Status"], "Enabled");
    }
}

#[test]
fn the_replication_role_reads_the_bucket_and_writes_only_the_replica_buckets() {
    let t = template();
    let role = &t.resource("BucketReplicationRole")["Properties"];
    let trust = statements(&role["AssumeRolePolicyDocument"]);
    assert_eq!(trust.len(), 1);
    assert_eq!(trust[0]["Principal"]["Service"], "s3.amazonaws.com");
    let (_, policy) = t
        .of_type("AWS::IAM::ManagedPolicy")
        .find(|(_, p)| {
            alternatives(&p["Properties"]["Roles"])
                .iter()
                .any(|r| target(r) == Some("BucketReplicationRole"))
        })
        .expect("a policy attached to the replication role");
    let granted = |action: &str| -> Vec<&Value> {
        statements(&policy["Properties"]["PolicyDocument"])
            .into_iter()
            .filter(|s| s["Effect"] == "Allow" && actions(s).contains(&action))
            .flat_map(resources_of)
            .collect()
    };
    for action in [
        "s3:GetReplicationConfiguration",
        "s3:GetObjectVersionForReplication",
    ] {
        assert!(
            granted(action)
                .iter()
                .all(|r| target(r) == Some("Bucket") || r["Fn::Sub"] == "${Bucket.Arn}/*"),
            "{action}"
        );
    }
    let writes = granted("s3:ReplicateObject");
    assert_eq!(writes.len(), 2, "{writes:?}");
    for (i, write) in writes.iter().enumerate() {
        let sub = write["Fn::Sub"].as_array().expect("${Arn}/*");
        assert_eq!(sub[0], "${Arn}/*");
        assert_eq!(slot(&sub[1]["Arn"]), Some((i as u64, "ReplicaBucketArns")));
    }
    let encrypt = granted("kms:Encrypt");
    let slots: Vec<_> = encrypt.iter().map(|k| slot(k)).collect();
    assert_eq!(
        slots,
        vec![Some((0, "ReplicaKeyArns")), Some((1, "ReplicaKeyArns"))]
    );
    assert_eq!(
        granted("kms:Decrypt")
            .iter()
            .map(|k| target(k))
            .collect::<Vec<_>>(),
        vec![Some("Key")]
    );
}
