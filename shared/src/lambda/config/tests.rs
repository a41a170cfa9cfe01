use super::*;
use crate::domain::Topic;

/// A complete environment: every variable any function reads, with plausible values.
fn full() -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut set = |k: &str, v: String| {
        map.insert(k.to_owned(), v);
    };
    set(TABLE_NAME, "evolve".into());
    set(BUCKET_NAME, "evolve-events".into());
    for q in Queue::ALL {
        let name = q.as_str();
        set(
            queue_url_variable(q),
            format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{name}"),
        );
        set(
            dlq_url_variable(q),
            format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{name}-dlq"),
        );
    }
    set(
        SNAPSHOT_QUEUE_ARN,
        "arn:aws:sqs:eu-west-1:123456789012:snapshot".into(),
    );
    set(
        FITNESS_QUEUE_ARN,
        "arn:aws:sqs:eu-west-1:123456789012:fitness".into(),
    );
    set(
        EVENTS_TOPIC_ARN,
        "arn:aws:sns:eu-west-1:123456789012:evolution-events".into(),
    );
    set(
        ALERTS_TOPIC_ARN,
        "arn:aws:sns:eu-west-1:123456789012:alerts".into(),
    );
    set(DAILY_BUDGET_NANO_USD, "5000000000".into());
    set(MONTHLY_BUDGET_NANO_USD, "100000000000".into());
    set(LLM, "local".into());
    set(MODEL_CATALOG, "catalog.json".into());
    set(APPROVAL_RISK_THRESHOLD, "0.6".into());
    set(APPROVAL_TTL_SECONDS, "3600".into());
    set(RESPONSE_CACHE_TTL_SECONDS, "600".into());
    set(
        NOTIFY_DLQ_URL,
        "https://sqs.eu-west-1.amazonaws.com/123456789012/notify-dlq".into(),
    );
    set(
        WEBHOOK_SECRET_ARN,
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:evolve-webhooks-AbCdEf".into(),
    );
    set(NOTIFY_MIN_LEVEL, "critical".into());
    set(NOTIFY_KINDS, "security, approval".into());
    set(WEBHOOK_SECRET_TTL_SECONDS, "60".into());
    set(WEBHOOK_TIMEOUT_MS, "2500".into());
    set(RECONCILE_THRESHOLD_BP, "350".into());
    set(RECONCILE_HOUR_UTC, "9".into());
    map
}

fn only(names: &[&str]) -> HashMap<String, String> {
    full()
        .into_iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .collect()
}

fn sorted(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

/// Runs `read` on the full environment and returns the names it looked at.
fn names_read<T>(read: impl Fn(&Vars<'_>) -> Result<T, ConfigError>) -> BTreeSet<&'static str> {
    let map = full();
    let vars = Vars::new(&map);
    read(&vars).expect("the full environment is valid");
    vars.read.into_inner()
}

#[test]
fn each_function_reads_exactly_the_variables_it_declares() {
    assert_eq!(
        names_read(AnalyzeConfig::read),
        sorted(&AnalyzeConfig::variables())
    );
    assert_eq!(
        names_read(StrategizeConfig::read),
        sorted(&StrategizeConfig::variables())
    );
    assert_eq!(
        names_read(DecideConfig::read),
        sorted(&DecideConfig::variables())
    );
    assert_eq!(
        names_read(SnapshotConfig::read),
        sorted(&SnapshotConfig::variables())
    );
    assert_eq!(
        names_read(CostGuardConfig::read),
        sorted(&CostGuardConfig::variables())
    );
    assert_eq!(
        names_read(NotifyConfig::read),
        sorted(&NotifyConfig::variables())
    );
    for (function, variables) in functions() {
        assert_eq!(
            sorted(&variables).len(),
            variables.len(),
            "{function} lists a variable twice"
        );
    }
}

#[test]
fn a_function_starts_with_only_its_own_variables_set() {
    AnalyzeConfig::from_map(&only(&AnalyzeConfig::variables())).expect("analyze");
    StrategizeConfig::from_map(&only(&StrategizeConfig::variables())).expect("strategize");
    DecideConfig::from_map(&only(&DecideConfig::variables())).expect("decide");
    SnapshotConfig::from_map(&only(&SnapshotConfig::variables())).expect("snapshot");
    CostGuardConfig::from_map(&only(&CostGuardConfig::variables())).expect("cost-guard");
    NotifyConfig::from_map(&only(&NotifyConfig::variables())).expect("notify");
}

#[test]
fn notify_posts_warnings_of_every_kind_unless_told_otherwise() {
    let c = NotifyConfig::from_map(&full()).expect("notify");
    assert_eq!(c.filter.min_level, crate::domain::AlertLevel::Critical);
    assert_eq!(
        c.filter.kinds,
        Some(BTreeSet::from([
            "approval".to_owned(),
            "security".to_owned()
        ]))
    );
    assert_eq!(c.secret_ttl, chrono::Duration::seconds(60));
    assert_eq!(c.post_timeout, std::time::Duration::from_millis(2500));
    let mut map = only(&NotifyConfig::variables());
    for name in [
        NOTIFY_MIN_LEVEL,
        NOTIFY_KINDS,
        WEBHOOK_SECRET_TTL_SECONDS,
        WEBHOOK_TIMEOUT_MS,
    ] {
        map.insert(name.into(), String::new());
    }
    let c = NotifyConfig::from_map(&map).expect("defaults");
    assert_eq!(c.filter, crate::domain::AlertFilter::default());
    assert_eq!(c.secret_ttl, chrono::Duration::seconds(300));
    assert_eq!(c.post_timeout, std::time::Duration::from_secs(5));
    for (name, value) in [(NOTIFY_MIN_LEVEL, "loud"), (WEBHOOK_TIMEOUT_MS, "0")] {
        let mut map = only(&NotifyConfig::variables());
        map.insert(name.into(), value.into());
        assert!(matches!(
            NotifyConfig::from_map(&map),
            Err(ConfigError::Invalid { name: n, .. }) if n == name
        ));
    }
}

#[test]
fn every_destination_a_stage_sends_to_is_configured() {
    let c = DecideConfig::from_map(&full()).expect("decide");
    let queues: Vec<_> = c.common.destinations.queues.keys().copied().collect();
    assert_eq!(
        queues,
        [
            Queue::Analyze,
            Queue::Decide,
            Queue::Snapshot,
            Queue::CostGuard
        ]
    );
    assert!(c.common.destinations.topics.contains_key(&Topic::Alerts));
    assert_eq!(
        c.common.dead_letters[&Queue::Decide],
        "https://sqs.eu-west-1.amazonaws.com/123456789012/decide-dlq"
    );
    let s = SnapshotConfig::from_map(&full()).expect("snapshot");
    assert_eq!(s.common.destinations.topics.len(), 2);
    assert_eq!(s.common.dead_letters.len(), 2);
}

#[test]
fn a_missing_variable_is_named() {
    for required in [TABLE_NAME, BUCKET_NAME, ANALYZE_DLQ_URL, DECIDE_QUEUE_URL] {
        let mut map = only(&AnalyzeConfig::variables());
        map.remove(required);
        assert_eq!(
            AnalyzeConfig::from_map(&map),
            Err(ConfigError::Missing(required))
        );
    }
    let mut map = only(&CostGuardConfig::variables());
    map.insert(ALERTS_TOPIC_ARN.into(), "   ".into());
    assert_eq!(
        CostGuardConfig::from_map(&map),
        Err(ConfigError::Missing(ALERTS_TOPIC_ARN))
    );
}

#[test]
fn an_invalid_variable_is_named_without_its_value() {
    let cases = [
        (LLM, "openai"),
        (DAILY_BUDGET_NANO_USD, "5.50"),
        (MONTHLY_BUDGET_NANO_USD, "-1"),
        (ANALYZE_QUEUE_URL, "analyze"),
        (RESPONSE_CACHE_TTL_SECONDS, "15m"),
    ];
    for (name, value) in cases {
        let mut map = only(&AnalyzeConfig::variables());
        map.insert(name.into(), value.into());
        let err = AnalyzeConfig::from_map(&map).expect_err(name);
        assert!(
            matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
            "{err}"
        );
        assert!(!err.to_string().contains(value), "{err}");
    }
    let mut map = only(&SnapshotConfig::variables());
    map.insert(EVENTS_TOPIC_ARN.into(), "evolution-events".into());
    assert!(matches!(
        SnapshotConfig::from_map(&map),
        Err(ConfigError::Invalid {
            name: EVENTS_TOPIC_ARN,
            ..
        })
    ));
}

#[test]
fn optional_variables_default_to_bedrock_without_budgets() {
    let mut map = only(&StrategizeConfig::variables());
    for name in [
        LLM,
        MODEL_CATALOG,
        DAILY_BUDGET_NANO_USD,
        RESPONSE_CACHE_TTL_SECONDS,
    ] {
        map.remove(name);
    }
    map.insert(MONTHLY_BUDGET_NANO_USD.into(), String::new());
    let c = StrategizeConfig::from_map(&map).expect("strategize");
    assert_eq!(c.llm, LlmSettings::default());
    assert_eq!(c.budgets.global_daily, None);
    assert_eq!(c.budgets.global_monthly, None);
    assert_eq!(c.pipeline().budgets.economy_percent, 80);
}

#[test]
fn budgets_and_engine_are_parsed() {
    let c = CostGuardConfig::from_map(&full()).expect("cost-guard");
    assert_eq!(c.budgets.global_daily, Some(5_000_000_000));
    assert_eq!(c.pipeline().budgets.global_monthly, Some(100_000_000_000));
    let a = AnalyzeConfig::from_map(&full()).expect("analyze");
    assert_eq!(a.llm.engine, LlmEngine::Local);
    assert_eq!(a.llm.model_catalog, Some(PathBuf::from("catalog.json")));
    assert_eq!(a.llm.response_cache_ttl_seconds, Some(600));
}

#[test]
fn cost_guard_reconciles_the_bill_when_given_a_threshold() {
    let c = CostGuardConfig::from_map(&full()).expect("cost-guard");
    let settings = ReconcileSettings {
        threshold_bp: 350,
        hour_utc: 9,
    };
    assert_eq!(c.reconcile, Some(settings));
    assert_eq!(c.pipeline().budgets.reconcile, Some(settings));
    let mut default_hour = full();
    default_hour.insert(RECONCILE_HOUR_UTC.into(), String::new());
    let c = CostGuardConfig::from_map(&default_hour).expect("default hour");
    assert_eq!(c.reconcile.map(|s| s.hour_utc), Some(6));
    for off in ["", "  "] {
        let mut map = full();
        map.insert(RECONCILE_THRESHOLD_BP.into(), off.into());
        let c = CostGuardConfig::from_map(&map).expect("off");
        assert_eq!(c.reconcile, None, "{off:?} turns the bill off");
        assert_eq!(c.pipeline().budgets.reconcile, None);
    }
    for (name, value) in [
        (RECONCILE_THRESHOLD_BP, "2%"),
        (RECONCILE_THRESHOLD_BP, "-1"),
        (RECONCILE_HOUR_UTC, "24"),
        (RECONCILE_HOUR_UTC, "6am"),
    ] {
        let mut bad = full();
        bad.insert(name.into(), value.into());
        let err = CostGuardConfig::from_map(&bad).expect_err(value);
        assert!(err.to_string().contains(name), "{err}");
    }
    let a = AnalyzeConfig::from_map(&full()).expect("analyze");
    assert_eq!(
        a.pipeline().budgets.reconcile,
        None,
        "only cost-guard reads the bill"
    );
    assert!(!AnalyzeConfig::variables().contains(&RECONCILE_THRESHOLD_BP));
}

#[test]
fn the_approval_gate_is_read_by_decide_only_and_checked() {
    let d = DecideConfig::from_map(&full()).expect("decide");
    assert_eq!(d.pipeline().approval_threshold, Some(0.6));
    assert_eq!(d.pipeline().approval_ttl_seconds, 3600);
    let a = AnalyzeConfig::from_map(&full()).expect("analyze");
    assert_eq!(a.pipeline().approval_threshold, None);
    let mut off = full();
    off.remove(APPROVAL_RISK_THRESHOLD);
    off.remove(APPROVAL_TTL_SECONDS);
    let d = DecideConfig::from_map(&off).expect("decide without a gate");
    assert_eq!(d.pipeline().approval_threshold, None);
    assert_eq!(d.pipeline().approval_ttl_seconds, 86_400);
    let mut bad = full();
    bad.insert(APPROVAL_RISK_THRESHOLD.into(), "1.5".into());
    let err = DecideConfig::from_map(&bad).expect_err("out of range");
    assert!(err.to_string().contains(APPROVAL_RISK_THRESHOLD), "{err}");
}

#[test]
fn snapshot_tells_its_two_queues_apart_by_source_arn() {
    let c = SnapshotConfig::from_map(&full())
        .expect("snapshot")
        .sources();
    assert_eq!(
        c.queue_of("arn:aws:sqs:eu-west-1:123456789012:snapshot"),
        Some(Queue::Snapshot)
    );
    assert_eq!(
        c.queue_of("arn:aws:sqs:eu-west-1:123456789012:fitness"),
        Some(Queue::Fitness)
    );
    assert_eq!(c.queue_of("arn:aws:sqs:eu-west-1:123456789012:other"), None);
}
