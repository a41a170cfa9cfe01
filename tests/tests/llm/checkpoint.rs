//! Checkpoint before parsing: the raw answer is stored under (envelope id, role) before it is
//! parsed, so calling again for the same envelope and role parses it instead of paying again.

use chrono::Duration;
use shared::cost::LedgerScope;
use shared::domain::Role;
use shared::llm::LanguageModel;
use tests::bedrock_stub::Usage as StubUsage;

use crate::fixture::{A, B, C, Fixture};
use crate::requests::{analyze_req, ok_from, strategize_req};

#[tokio::test]
async fn calling_again_for_the_same_envelope_and_role_parses_the_checkpoint_without_a_request() {
    for model in [A, B, C] {
        let f = Fixture::new(&[model]).await;
        let usage = StubUsage::new(1_500, 300).with_cache(20, 10);
        f.stub
            .push_for(model, ok_from(model, Role::Analyze).with_usage(usage));
        let req = analyze_req("env-checkpointed");

        let first = f.model.analyze(&req).await.expect("an answer");
        assert_eq!(f.stub.request_count(), 1);
        assert_eq!(first.bedrock_requests, 1);
        let paid = f.today(&LedgerScope::Total).await;

        let again = f.model.analyze(&req).await.expect("an answer");

        assert_eq!(f.stub.request_count(), 1, "{model}: no second request");
        assert_eq!(again.value, first.value);
        assert_eq!(again.model_id, first.model_id);
        assert_eq!(again.usage, first.usage);
        assert_eq!(again.cost_nano_usd, first.cost_nano_usd);
        assert_eq!(again.bedrock_requests, 0);
        assert_eq!(again.fallback, None);
        assert_eq!(
            f.today(&LedgerScope::Total).await,
            paid,
            "nothing paid again"
        );
    }
}

#[tokio::test]
async fn the_checkpoint_belongs_to_one_envelope_and_role_and_expires() {
    let f = Fixture::new(&[A]).await;
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    f.model
        .analyze(&analyze_req("env-a"))
        .await
        .expect("an answer");
    assert_eq!(f.stub.request_count(), 1);

    // Another role on the same envelope is a different call.
    f.stub.push_for(A, ok_from(A, Role::Strategize));
    let strategy = f
        .model
        .strategize(&strategize_req("env-a"))
        .await
        .expect("an answer");
    assert_eq!(strategy.bedrock_requests, 1);
    // So is the same role on another envelope.
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let other = f
        .model
        .analyze(&analyze_req("env-b"))
        .await
        .expect("an answer");
    assert_eq!(other.bedrock_requests, 1);
    assert_eq!(f.stub.request_count(), 3);

    // Past its time to live the checkpoint is gone and the call is made again.
    let ttl = f.settings.checkpoint_ttl;
    f.clock.advance(ttl + Duration::seconds(1));
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let late = f
        .model
        .analyze(&analyze_req("env-a"))
        .await
        .expect("an answer");
    assert_eq!(late.bedrock_requests, 1);
    assert_eq!(f.stub.request_count(), 4);
}
