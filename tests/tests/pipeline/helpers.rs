//! A harness around the real pipeline with the in-memory store, a scripted language model and a
//! simple evaluator, so each test controls exactly what the LLM roles answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::domain::{
    DecisionResult, EvolutionAnalysis, FitnessScore, GeneChange, GeneDef, GeneName, GeneSchema,
    GeneSpec, GeneValue, Genes, MutationStrategy, Recommendation, ResolutionAction,
    ResolutionStrategy, RiskAssessment, StrategicMutation, SystemId,
};
use shared::evaluator::{EvalError, Evaluator};
use shared::llm::{
    AnalyzeRequest, DecideRequest, LanguageModel, LlmAnswer, LlmError, ResolveRequest,
    StrategizeRequest,
};
use shared::local::{LocalHome, init_system};
use shared::stages::PipelineConfig;
use shared::store::SystemSettings;
use shared::store::memory::MemoryStore;

pub const START: &str = "2026-03-01T12:00:00Z";

pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(START)
        .expect("valid time")
        .with_timezone(&Utc)
}

pub fn name(s: &str) -> GeneName {
    GeneName::parse(s).expect("valid gene name")
}

pub fn system_id() -> SystemId {
    SystemId::parse("svc").expect("valid id")
}

/// Two genes: `x` (int 0..100, step 10, starts at 50) and `y` (int 0..100, step 10, starts 50).
pub fn dna() -> (GeneSchema, Genes) {
    let mut schema = GeneSchema::new();
    let mut genes = Genes::new();
    for g in ["x", "y"] {
        schema.insert(
            name(g),
            GeneDef {
                spec: GeneSpec::Int {
                    min: 0,
                    max: 100,
                    max_step: Some(10),
                },
                risk_weight: 0.1,
                description: None,
                frozen: false,
            },
        );
        genes.insert(name(g), GeneValue::Int(50));
    }
    (schema, genes)
}

pub fn step(id: &str, gene: &str, value: i64) -> StrategicMutation {
    StrategicMutation {
        id: id.into(),
        changes: vec![GeneChange {
            gene: name(gene),
            value: GeneValue::Int(value),
        }],
        rationale: format!("set {gene} to {value}"),
        predicted_impact: 1.0,
        contingency_for: None,
    }
}

pub fn strategy(primary: Vec<StrategicMutation>) -> MutationStrategy {
    MutationStrategy {
        primary_mutations: primary,
        contingency_mutations: vec![],
        execution_order: vec![],
        success_criteria: std::collections::BTreeMap::default(),
        risk_mitigation: vec![],
        expected_outcomes: std::collections::BTreeMap::default(),
        timeline_estimate: String::new(),
    }
}

/// A language model whose strategies are scripted; it counts the calls per role.
#[derive(Debug, Default)]
pub struct Scripted {
    pub strategies: Mutex<VecDeque<MutationStrategy>>,
    pub decide_with: Mutex<Option<Recommendation>>,
    /// The conflict resolution's action (default: escalate, which changes nothing).
    pub resolve_with: Mutex<Option<ResolutionAction>>,
    pub analyze_calls: AtomicU32,
    pub strategize_calls: AtomicU32,
    pub decide_calls: AtomicU32,
    pub resolve_calls: AtomicU32,
}

impl Scripted {
    pub fn with(strategies: Vec<MutationStrategy>) -> Arc<Self> {
        Arc::new(Self {
            strategies: Mutex::new(strategies.into()),
            ..Self::default()
        })
    }

    pub fn analyses(&self) -> u32 {
        self.analyze_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LanguageModel for Scripted {
    async fn analyze(&self, _: &AnalyzeRequest) -> Result<LlmAnswer<EvolutionAnalysis>, LlmError> {
        self.analyze_calls.fetch_add(1, Ordering::SeqCst);
        Ok(LlmAnswer::local(
            EvolutionAnalysis {
                current_state_assessment: "scripted".into(),
                strengths: vec![],
                weaknesses: vec![],
                opportunities: vec![],
                threats: vec![],
                recommended_focus_areas: vec!["x".into()],
                confidence_score: 0.5,
                reasoning: "scripted".into(),
            },
            "test:scripted",
        ))
    }

    async fn strategize(
        &self,
        _: &StrategizeRequest,
    ) -> Result<LlmAnswer<MutationStrategy>, LlmError> {
        self.strategize_calls.fetch_add(1, Ordering::SeqCst);
        let next = self
            .strategies
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| strategy(vec![]));
        Ok(LlmAnswer::local(next, "test:scripted"))
    }

    async fn decide(&self, req: &DecideRequest) -> Result<LlmAnswer<DecisionResult>, LlmError> {
        self.decide_calls.fetch_add(1, Ordering::SeqCst);
        let recommendation = self
            .decide_with
            .lock()
            .expect("lock")
            .unwrap_or(Recommendation::Approve);
        Ok(LlmAnswer::local(
            DecisionResult {
                recommendation,
                confidence: 0.9,
                risk_assessment: RiskAssessment {
                    overall_risk: req.local_risk,
                    technical_risk: req.local_risk,
                    business_risk: 0.1,
                    operational_risk: 0.1,
                },
                benefits: vec![],
                drawbacks: vec![],
                mitigation_strategies: vec![],
                reasoning: "scripted".into(),
                estimated_impact: std::collections::BTreeMap::default(),
            },
            "test:scripted",
        ))
    }

    async fn resolve_conflict(
        &self,
        _: &ResolveRequest,
    ) -> Result<LlmAnswer<ResolutionStrategy>, LlmError> {
        self.resolve_calls.fetch_add(1, Ordering::SeqCst);
        let action = self
            .resolve_with
            .lock()
            .expect("lock")
            .unwrap_or(ResolutionAction::Escalate);
        Ok(LlmAnswer::local(
            ResolutionStrategy {
                action,
                retry_after_seconds: 0,
                immediate_actions: vec![],
                root_cause_analysis: String::new(),
                prevention_measures: vec![],
                risk_assessment: 0.5,
                success_metrics: vec![],
                reasoning: "scripted".into(),
            },
            "test:scripted",
        ))
    }
}

/// A fitness function of the genes; `None` means the workload failed.
pub type Fitness = Box<dyn Fn(&Genes) -> Option<f64> + Send + Sync>;

/// Evaluates with a [`Fitness`] function.
pub struct FnEvaluator(pub Fitness);

impl std::fmt::Debug for FnEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnEvaluator")
    }
}

#[async_trait]
impl Evaluator for FnEvaluator {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        (self.0)(genes)
            .map(|score| FitnessScore {
                score,
                metrics: std::collections::BTreeMap::default(),
            })
            .ok_or_else(|| EvalError::Workload("simulated failure".into()))
    }
}

pub fn int(genes: &Genes, g: &str) -> i64 {
    match genes.get(&name(g)) {
        Some(GeneValue::Int(v)) => *v,
        other => panic!("gene {g} is {other:?}"),
    }
}

/// Fitness rises with `x` and ignores `y`.
pub fn rises_with_x() -> FnEvaluator {
    FnEvaluator(Box::new(|g| Some(int(g, "x") as f64)))
}

pub struct Harness {
    pub home: LocalHome,
    pub store: Arc<MemoryStore>,
    pub llm: Arc<Scripted>,
}

/// Policy approves everything: these tests are about the flow, not risk.
pub fn permissive() -> PipelineConfig {
    PipelineConfig {
        auto_approve_risk: 1.0,
        ..PipelineConfig::default()
    }
}

pub async fn harness(llm: Arc<Scripted>, config: PipelineConfig) -> Harness {
    harness_with(llm, config, SystemSettings::default()).await
}

/// A harness whose system starts with `settings` (guardrails, objectives, samples).
pub async fn harness_with(
    llm: Arc<Scripted>,
    config: PipelineConfig,
    settings: SystemSettings,
) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let home = LocalHome::new(store.clone(), llm.clone(), start(), config);
    let (schema, genes) = dna();
    init_system(
        &home.deps,
        home.bus.as_ref(),
        &system_id(),
        schema,
        genes,
        settings,
    )
    .await
    .expect("init");
    Harness { home, store, llm }
}
