//! The administration calls: ownership, rollout stages, failover and
//! audit records, drills and anti-entropy (admin token).

use reqwest::Method;

use super::{Auth, ClientError, RegionClient, json_body};
use crate::api::{
    AntiEntropyAnswer, AntiEntropyRequest, AuditRecords, AuditRecordsAnswer, FailoverRecords,
    FailoverRecordsAnswer, Fault, FaultAnswer, FaultRequest, MoveOwnership, MoveRollout, Ownership,
    RolloutMoved, Rollouts,
};

impl RegionClient {
    /// `GET /v1/admin/backup`: writes the region's backup (a consistent
    /// snapshot of its store) to `out` as it streams in; the bytes written.
    /// The call has no time limit: a backup takes as long as the store
    /// takes to read.
    pub async fn backup(&self, out: &mut (dyn std::io::Write + Send)) -> Result<u64, ClientError> {
        let url = format!("{}/v1/admin/backup", self.base);
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(self.admin_token())
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(self.refused(&Method::GET, &url, status, &body));
        }
        let mut written = 0;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&url, e))? {
            out.write_all(&chunk)
                .map_err(|e| ClientError::Invalid(format!("cannot write the backup: {e}")))?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }

    /// `GET /v1/admin/ownership`.
    pub async fn ownership(&self) -> Result<Ownership, ClientError> {
        self.call(Method::GET, "/v1/admin/ownership", Auth::Admin, None, None)
            .await
    }

    /// `POST /v1/admin/ownership`: `region`'s keys move to `delegate`.
    pub async fn move_ownership(
        &self,
        region: &str,
        delegate: &str,
    ) -> Result<Ownership, ClientError> {
        self.move_ownership_if(&MoveOwnership {
            region: region.to_owned(),
            delegate: delegate.to_owned(),
            expect_epoch: None,
            unreachable_for_ms: None,
        })
        .await
    }

    /// `POST /v1/admin/ownership` with its conditions: a 409
    /// (`precondition_failed`) when one does not hold.
    pub async fn move_ownership_if(&self, m: &MoveOwnership) -> Result<Ownership, ClientError> {
        self.call(
            Method::POST,
            "/v1/admin/ownership",
            Auth::Admin,
            None,
            Some(json_body(m)?),
        )
        .await
    }

    /// `POST /v1/admin/failovers`: the region's collector keeps the rows.
    pub async fn failover_records(
        &self,
        records: &FailoverRecords,
    ) -> Result<FailoverRecordsAnswer, ClientError> {
        self.call(
            Method::POST,
            "/v1/admin/failovers",
            Auth::Admin,
            None,
            Some(json_body(records)?),
        )
        .await
    }

    /// `POST /v1/admin/fault` (drills only).
    pub async fn fault(
        &self,
        class: &str,
        key: &str,
        action: Fault,
    ) -> Result<FaultAnswer, ClientError> {
        let body = FaultRequest {
            class: class.to_owned(),
            key: key.to_owned(),
            action,
        };
        self.call(
            Method::POST,
            "/v1/admin/fault",
            Auth::Admin,
            None,
            Some(json_body(&body)?),
        )
        .await
    }

    /// `POST /v1/admin/anti-entropy`: with `peer`, or every peer.
    pub async fn anti_entropy(&self, peer: Option<&str>) -> Result<AntiEntropyAnswer, ClientError> {
        let body = AntiEntropyRequest {
            peer: peer.map(str::to_owned),
        };
        self.call(
            Method::POST,
            "/v1/admin/anti-entropy",
            Auth::Admin,
            None,
            Some(json_body(&body)?),
        )
        .await
    }

    /// `POST /v1/admin/audit-records`: the region's collector keeps them.
    pub async fn audit_records(
        &self,
        records: &AuditRecords,
    ) -> Result<AuditRecordsAnswer, ClientError> {
        self.call(
            Method::POST,
            "/v1/admin/audit-records",
            Auth::Admin,
            None,
            Some(json_body(records)?),
        )
        .await
    }

    /// `GET /v1/admin/rollout`: every class's stage.
    pub async fn rollouts(&self) -> Result<Rollouts, ClientError> {
        self.call(Method::GET, "/v1/admin/rollout", Auth::Admin, None, None)
            .await
    }

    /// `POST /v1/admin/rollout`: moves a class to another stage; a 409
    /// (`precondition_failed`) when that skips a stage and `force` is not set.
    pub async fn move_rollout(&self, m: &MoveRollout) -> Result<RolloutMoved, ClientError> {
        self.call(
            Method::POST,
            "/v1/admin/rollout",
            Auth::Admin,
            None,
            Some(json_body(m)?),
        )
        .await
    }
}
