//! Who may read the audit log: auditors (members of a configured auditor
//! group, per the catalog) read everything; anyone else only their own
//! records, and must say so by filtering on themselves.

use std::sync::Arc;

use super::BrokerError;
use crate::audit::{AuditPage, AuditQuery, AuditStore};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;

pub(super) struct AuditReads {
    pub audit: Arc<dyn AuditStore>,
    pub catalog: Arc<dyn Catalog>,
    pub auditor_groups: Vec<EntityRef>,
}

impl AuditReads {
    pub async fn read(
        &self,
        principal: &Principal,
        query: &AuditQuery,
    ) -> Result<AuditPage, BrokerError> {
        let groups = self.catalog.groups_of(&principal.subject).await?;
        let auditor = self.auditor_groups.iter().any(|g| groups.contains(g));
        let own = query.requester.as_deref() == Some(principal.subject.to_string().as_str());
        if !auditor && !own {
            tracing::warn!(requester = %principal.subject, "audit log read refused");
            return Err(BrokerError::AuditForbidden(format!(
                "{} is not in an auditor group, so it may only read its own records",
                principal.subject
            )));
        }
        Ok(self.audit.query(query).await?)
    }
}
