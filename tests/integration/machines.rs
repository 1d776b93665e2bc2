//! Machine callers through the real broker: tokens from the GitHub Actions,
//! GitLab CI, Pulumi Deployments, HCP Terraform and Kubernetes doubles are
//! verified against each issuer's discovery and keys, mapped to the catalog
//! component their binding names (the Backstage double answers the
//! annotation queries), bound to their stack, limited by run phase, and
//! audited with the run that asked.

use serde_json::{json, Value};

use crate::support::*;

const AUDIENCE: &str = "https://stackpass.example.com";

/// payments' repository is acme/payments (owner id 7, repository id 42;
/// GitLab project 22 in namespace 5); search's is acme/search (id 43), which
/// records no GitLab project.
fn entities() -> Vec<Value> {
    let mut entities = default_entities();
    entities.retain(|e| e["kind"] != "Component");
    entities.push(annotated(
        component("payments", "team-payments"),
        &[
            ("github.com/project-slug", "acme/payments"),
            ("stackpass.dev/github-repository-id", "42"),
            ("gitlab.com/project-slug", "acme/payments"),
            ("stackpass.dev/gitlab-project-id", "22"),
        ],
    ));
    entities.push(annotated(
        component("search", "team-search"),
        &[
            ("github.com/project-slug", "acme/search"),
            ("stackpass.dev/github-repository-id", "43"),
        ],
    ));
    entities
}

struct Machines {
    github: GithubActionsDouble,
    gitlab: GitlabCiDouble,
    pulumi: PulumiDeploymentsDouble,
    terraform: HcpTerraformIssuerDouble,
    kubernetes: KubernetesDouble,
    backstage: BackstageDouble,
    broker: Broker,
    _sts: StsRecorder,
}

impl Machines {
    async fn start() -> Machines {
        Self::start_with(entities()).await
    }

    async fn start_with(entities: Vec<Value>) -> Machines {
        let (github, gitlab, pulumi, terraform, kubernetes) = tokio::join!(
            GithubActionsDouble::start(),
            GitlabCiDouble::start(),
            PulumiDeploymentsDouble::start(),
            HcpTerraformIssuerDouble::start(),
            KubernetesDouble::start(),
        );
        let backstage = BackstageDouble::start_with(entities).await;
        let sts = StsRecorder::start(StsBehaviour::Succeed).await;
        let mut options = BrokerOptions::new(&backstage, &sts.url);
        options.extra_config = format!(
            r#"
[[identity.issuers]]
name = "github"
kind = "github-actions"
issuer = "{github}"
audiences = ["{AUDIENCE}"]
subjects = ["component:default/*"]
repository_owner_ids = ["7"]
web_url = "https://github.example.com"

[[identity.issuers]]
name = "gitlab"
kind = "gitlab-ci"
issuer = "{gitlab}"
audiences = ["{AUDIENCE}"]
subjects = ["component:default/*"]
namespace_ids = ["5"]

[[identity.issuers]]
name = "pulumi"
kind = "pulumi-deployments"
issuer = "{pulumi}"
audiences = ["acme"]
subjects = ["component:default/*"]

[[identity.issuers]]
name = "terraform"
kind = "hcp-terraform"
issuer = "{terraform}"
audiences = ["{AUDIENCE}"]
subjects = ["component:default/*"]
organization_ids = ["org-Bzs1XS5wL9Qm5pEk"]

[[identity.issuers]]
name = "cluster"
kind = "kubernetes"
issuer = "{kubernetes}"
audiences = ["{AUDIENCE}"]
subjects = ["component:default/*"]
service_accounts = {{ "payments/deployer" = "component:default/payments" }}

[[policy.rules]]
name = "pipelines-plan-prod-read"
provider = "aws"
run_phases = ["plan", "preview"]
tags = {{ environment = ["prod"], aws-account = ["*"] }}
role = "arn:aws:iam::{{tags.aws-account}}:role/{{component}}-readonly"

[[policy.rules]]
name = "pipelines-apply-prod"
provider = "aws"
run_phases = ["apply", "update"]
tags = {{ environment = ["prod"], aws-account = ["*"] }}
role = "arn:aws:iam::{{tags.aws-account}}:role/{{component}}-deployer"
"#,
            github = github.issuer.issuer,
            gitlab = gitlab.issuer.issuer,
            pulumi = pulumi.issuer.issuer,
            terraform = terraform.issuer.issuer,
            kubernetes = kubernetes.issuer.issuer,
        );
        let broker = Broker::start(options).await;
        Machines {
            github,
            gitlab,
            pulumi,
            terraform,
            kubernetes,
            backstage,
            broker,
            _sts: sts,
        }
    }

    async fn ask(&self, token: &str, stack: &str) -> TestResponse {
        self.broker
            .request_credentials(Some(token), credential_request(stack))
            .await
    }

    fn payments_run(&self) -> GithubRun {
        GithubRun::new("acme", "7", "payments", "42")
    }

    fn terraform_run(&self, workspace: &str, phase: &str) -> TerraformRun {
        TerraformRun {
            organization: "acme".into(),
            organization_id: "org-Bzs1XS5wL9Qm5pEk".into(),
            workspace: workspace.into(),
            phase: phase.into(),
            run_id: "run-CZcmD7eagjhyX0vN".into(),
        }
    }

    /// The audit rows of one event, newest last.
    async fn rows(&self, event: &str) -> Vec<Value> {
        self.broker
            .audit_rows()
            .await
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

fn detail(row: &Value) -> Value {
    serde_json::from_str(row["detail"].as_str().unwrap_or("null")).unwrap()
}

#[tokio::test]
async fn the_owning_repositorys_pipeline_gets_its_components_credentials_and_the_audit_names_the_run(
) {
    let m = Machines::start().await;
    let response = m
        .ask(
            &m.github.token(&m.payments_run(), AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["rule"], "owners-deploy-nonprod");
    assert_eq!(
        response.body["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    let decision = m.rows("decision").await.pop().unwrap();
    assert_eq!(decision["requester"], "component:default/payments");
    assert_eq!(decision["requester_kind"], "service");
    assert!(decision["actor"].is_null());
    assert_eq!(
        detail(&decision)["pipeline"],
        json!({
            "system": "github-actions",
            "run_id": "9876543210",
            "run_url": "https://github.example.com/acme/payments/actions/runs/9876543210/attempts/1",
            "repository": "acme/payments",
            "ref": "refs/heads/main",
            "workflow": "acme/payments/.github/workflows/deploy.yml@refs/heads/main",
        })
    );
    // Every record of the issuance names the run, not just the decision.
    let outcome = m.rows("issuance_outcome").await.pop().unwrap();
    assert_eq!(detail(&outcome)["pipeline"]["run_id"], "9876543210");

    // The immutable subject form maps the same way.
    let mut immutable = m.payments_run();
    immutable.immutable_subject = true;
    let response = m
        .ask(
            &m.github.token(&immutable, AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
}

#[tokio::test]
async fn another_repositorys_pipeline_is_denied_and_told_why() {
    let m = Machines::start().await;
    let search = GithubRun::new("acme", "7", "search", "43");
    let response = m
        .ask(
            &m.github.token(&search, AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    response.assert_problem(403, "denied");
    // As for a person of another team: denied, and nothing about the stack.
    assert!(
        !response.text.contains("team-payments"),
        "{}",
        response.text
    );
    let denied = m.rows("decision").await.pop().unwrap();
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["requester"], "component:default/search");
    let detail = detail(&denied);
    assert_eq!(detail["pipeline"]["repository"], "acme/search");
    assert!(
        detail.to_string().contains("component:default/search (a github-actions pipeline) may act on its own component's stacks only"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_renamed_repository_maps_by_its_ids_and_a_recreated_one_is_refused() {
    // The catalog followed the rename: same ids, new slug.
    let mut entities = entities();
    for entity in &mut entities {
        if entity["metadata"]["name"] == "payments" {
            entity["metadata"]["annotations"]["github.com/project-slug"] =
                json!("acme/payments-api");
        }
    }
    let m = Machines::start_with(entities).await;
    let renamed = GithubRun::new("acme", "7", "payments-api", "42");
    let response = m
        .ask(
            &m.github.token(&renamed, AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);

    // Someone creates a new repository under the old component's slug: its
    // id is not the one the catalog records.
    let impostor = GithubRun::new("acme", "7", "payments-api", "4242");
    let response = m
        .ask(
            &m.github.token(&impostor, AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    response.assert_problem(401, "unauthenticated");
    assert!(
        response
            .text
            .contains("stackpass.dev/github-repository-id: 42, but this token's is 4242"),
        "{}",
        response.text
    );
    // Refused before any decision: nothing audited for the impostor.
    assert_eq!(m.rows("decision").await.len(), 1);
}

#[tokio::test]
async fn forks_and_fork_triggered_events_are_refused() {
    let m = Machines::start().await;
    // A fork under another owner: its claims are its own, and its owner is not pinned.
    let fork = GithubRun::new("mallory", "666", "payments", "777");
    let response = m
        .ask(&m.github.token(&fork, AUDIENCE), "pulumi:acme/payments/dev")
        .await;
    response.assert_problem(401, "unauthenticated");
    assert!(
        response.text.contains("a fork lives under another owner"),
        "{}",
        response.text
    );
    // A fork's pull request run in the base repository's context carries the
    // base's claims; the events that do so are never trusted.
    for event in ["pull_request_target", "workflow_run", "pull_request"] {
        let mut run = m.payments_run();
        run.event = event.into();
        let response = m
            .ask(&m.github.token(&run, AUDIENCE), "pulumi:acme/payments/dev")
            .await;
        response.assert_problem(401, "unauthenticated");
        assert!(response.text.contains(event), "{event}: {}", response.text);
    }
    // A token for another audience is not for this broker.
    let response = m
        .ask(
            &m.github.token(&m.payments_run(), "https://github.com/acme"),
            "pulumi:acme/payments/dev",
        )
        .await;
    response.assert_problem(401, "unauthenticated");
    assert!(m.rows("decision").await.is_empty());
}

#[tokio::test]
async fn a_pulumi_deployment_gets_its_own_stack_only() {
    let m = Machines::start().await;
    let token = m.pulumi.token("acme", "payments", "dev", "update");
    let response = m.ask(&token, "pulumi:acme/payments/dev").await;
    assert_eq!(response.status, 200, "{}", response.text);

    let response = m.ask(&token, "pulumi:acme/payments/prod").await;
    response.assert_problem(403, "denied");
    assert!(
        response.text.contains("this pulumi-deployments token is for a run of pulumi:acme/payments/dev; it gets credentials for that stack only, not pulumi:acme/payments/prod"),
        "{}",
        response.text
    );
    let denied = m.rows("decision").await.pop().unwrap();
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["stack"], "pulumi:acme/payments/prod");
    assert_eq!(denied["requester"], "component:default/payments");
    let detail = detail(&denied);
    assert!(
        detail["summary"]
            .as_str()
            .unwrap()
            .contains("that stack only"),
        "{detail}"
    );
    assert_eq!(detail["pipeline"]["stack"], "pulumi:acme/payments/dev");
    assert_eq!(detail["pipeline"]["phase"], "update");

    // A preview carries scope:write too; its operation limits it to the read rule.
    let preview = m.pulumi.token("acme", "payments", "prod", "preview");
    let response = m.ask(&preview, "pulumi:acme/payments/prod").await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["rule"], "pipelines-plan-prod-read");
}

#[tokio::test]
async fn a_plan_phase_gets_only_the_read_only_grant() {
    let m = Machines::start().await;
    let plan = m
        .terraform
        .token(&m.terraform_run("payments-prod", "plan"), AUDIENCE);
    let response = m.ask(&plan, "terraform:acme/payments-prod").await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["rule"], "pipelines-plan-prod-read");
    assert_eq!(
        response.body["role"],
        "arn:aws:iam::999999999999:role/payments-readonly"
    );
    let apply = m
        .terraform
        .token(&m.terraform_run("payments-prod", "apply"), AUDIENCE);
    let response = m.ask(&apply, "terraform:acme/payments-prod").await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["rule"], "pipelines-apply-prod");
    assert_eq!(
        response.body["role"],
        "arn:aws:iam::999999999999:role/payments-deployer"
    );
    let decision = m.rows("decision").await.pop().unwrap();
    assert_eq!(
        detail(&decision)["pipeline"],
        json!({
            "system": "hcp-terraform",
            "run_id": "run-CZcmD7eagjhyX0vN",
            "run_url": format!("{}/app/acme/workspaces/payments-prod/runs/run-CZcmD7eagjhyX0vN", m.terraform.issuer.issuer),
            "workflow": "payments-prod",
            "phase": "apply",
            "stack": "terraform:acme/payments-prod",
        })
    );
    // Another organization's workspace of the same name is nobody here.
    let mut foreign = m.terraform_run("payments-prod", "apply");
    foreign.organization_id = "org-SomeoneElse".into();
    let response = m
        .ask(
            &m.terraform.token(&foreign, AUDIENCE),
            "terraform:acme/payments-prod",
        )
        .await;
    response.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn gitlab_and_kubernetes_callers_map_through_their_bindings() {
    let m = Machines::start().await;
    let pipeline = GitlabPipeline {
        namespace: "acme".into(),
        namespace_id: "5".into(),
        project: "payments".into(),
        project_id: "22".into(),
        source: "push".into(),
        pipeline_id: "1001".into(),
    };
    let response = m
        .ask(
            &m.gitlab.token(&pipeline, AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let decision = m.rows("decision").await.pop().unwrap();
    assert_eq!(detail(&decision)["pipeline"]["system"], "gitlab-ci");
    assert_eq!(
        detail(&decision)["pipeline"]["run_url"],
        format!("{}/acme/payments/-/pipelines/1001", m.gitlab.issuer.issuer)
    );
    // A merge request pipeline can run a fork's code as the parent project.
    let mr = GitlabPipeline {
        source: "merge_request_event".into(),
        ..pipeline
    };
    let response = m
        .ask(&m.gitlab.token(&mr, AUDIENCE), "pulumi:acme/payments/dev")
        .await;
    response.assert_problem(401, "unauthenticated");

    let response = m
        .ask(
            &m.kubernetes.token("payments", "deployer", AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let response = m
        .ask(
            &m.kubernetes.token("payments", "default", AUDIENCE),
            "pulumi:acme/payments/dev",
        )
        .await;
    response.assert_problem(401, "unauthenticated");
    assert!(
        response.text.contains("payments/default is not mapped"),
        "{}",
        response.text
    );
    // The catalog was asked by annotation, through the Backstage double.
    assert!(m.backstage.catalog_hits() > 0);
}
