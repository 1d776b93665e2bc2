//! Who may read the audit log: auditors (members of a configured auditor
//! group, per the catalog) read everything; anyone else only their own
//! records, and must say so by filtering on themselves.
//!
//! Every read is itself audited (`audit_read`: who, the query, how many
//! records) and committed before the page is returned; if that record cannot
//! be written the read fails (fail closed), as an issuance would. Refused reads
//! are audited too.

use std::sync::Arc;

use super::events::{Event, Recorder};
use super::{BrokerError, RequestContext};
use crate::audit::{AuditPage, AuditQuery};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;

pub(super) struct AuditReads {
    pub recorder: Recorder,
    pub catalog: Arc<dyn Catalog>,
    pub auditor_groups: Vec<EntityRef>,
}

impl AuditReads {
    pub async fn read(
        &self,
        context: &RequestContext,
        principal: &Principal,
        query: &AuditQuery,
    ) -> Result<AuditPage, BrokerError> {
        let groups = self.catalog.groups_of(&principal.subject).await?;
        let auditor = self.auditor_groups.iter().any(|g| groups.contains(g));
        let own = query.requester.as_deref() == Some(principal.subject.to_string().as_str());
        if !auditor && !own {
            tracing::warn!(requester = %principal.subject, "audit log read refused");
            let why = format!(
                "{} is not in an auditor group, so it may only read its own records",
                principal.subject
            );
            self.recorder
                .record(&[Event::AuditRead {
                    context,
                    principal,
                    query,
                    result: Err(&why),
                }])
                .await?;
            return Err(BrokerError::AuditForbidden(why));
        }
        let page = self.recorder.audit().query(query).await?;
        self.recorder
            .record(&[Event::AuditRead {
                context,
                principal,
                query,
                result: Ok(&page),
            }])
            .await?;
        Ok(page)
    }
}
