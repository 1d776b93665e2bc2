//! `POST /v1/decisions`: what the policy would decide for a credential request,
//! and why, without minting or issuing anything. The dry run is audited.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::credentials::credential_request;
use super::extract::JsonBody;
use super::Problem;
use crate::broker::{Broker, RequestContext};
use crate::identity::Principal;
use crate::wire;

/// What the policy would decide for a credential request, and why.
///
/// A dry run: nothing is minted or issued; the question is audited.
#[utoipa::path(
    post,
    path = "/v1/decisions",
    tag = "credentials",
    operation_id = "explain_decision",
    request_body(
        content = wire::CredentialRequest,
        example = json!({"stack": "pulumi:acme/payments/dev", "provider": "aws"}),
    ),
    responses((status = 200, description = "The decision: allow (with the grant), needs approval, or deny (with each rule's reasons, for the stack's owners and auditors)", body = wire::Decision)),
    security(("bearer" = [])),
)]
pub async fn explain(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::CredentialRequest>,
) -> Result<Json<wire::Decision>, Problem> {
    let request = credential_request(body)?;
    let decision = broker.explain(&context, principal, &request).await?;
    Ok(Json((&decision).into()))
}
