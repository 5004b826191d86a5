//! Data-deletion requests (Meta's data-deletion callback). Not tenant data: a request may touch
//! several merchants or none, and its status is looked up by confirmation code alone.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::{Db, DbError};
use crate::schema::data_deletion_requests as ddr;

crate::text_enum::text_enum! {
    /// Where a data-deletion request stands (`data_deletion_requests.status`).
    pub enum DeletionStatus {
        Pending => "pending",
        Completed => "completed",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ddr)]
pub struct DeletionRequest {
    pub confirmation_code: String,
    pub status: DeletionStatus,
    pub accounts_disconnected: i32,
    pub conversations_deleted: i32,
    pub requested_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Db {
    pub async fn create_deletion_request(
        &self,
        confirmation_code: &str,
        subject_sha256: &str,
    ) -> Result<(), DbError> {
        let mut conn = self.checkout().await?;
        diesel::insert_into(ddr::table)
            .values((
                ddr::confirmation_code.eq(confirmation_code),
                ddr::subject_sha256.eq(subject_sha256),
                ddr::status.eq(DeletionStatus::Pending),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn complete_deletion_request(
        &self,
        confirmation_code: &str,
        accounts_disconnected: usize,
        conversations_deleted: usize,
    ) -> Result<(), DbError> {
        let mut conn = self.checkout().await?;
        diesel::update(ddr::table.find(confirmation_code))
            .set((
                ddr::status.eq(DeletionStatus::Completed),
                ddr::accounts_disconnected
                    .eq(i32::try_from(accounts_disconnected).unwrap_or(i32::MAX)),
                ddr::conversations_deleted
                    .eq(i32::try_from(conversations_deleted).unwrap_or(i32::MAX)),
                ddr::completed_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn deletion_request(
        &self,
        confirmation_code: &str,
    ) -> Result<Option<DeletionRequest>, DbError> {
        let mut conn = self.checkout().await?;
        Ok(ddr::table
            .find(confirmation_code)
            .select(DeletionRequest::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::DeletionStatus;

    #[test]
    fn statuses_are_the_words_the_column_allows() {
        let words: Vec<&str> = DeletionStatus::ALL.iter().map(|s| s.as_str()).collect();
        crate::text_enum::tests::assert_checked("status", &words);
        for s in DeletionStatus::ALL {
            assert_eq!(s.as_str().parse::<DeletionStatus>(), Ok(*s));
        }
    }
}
