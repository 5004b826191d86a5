// The diesel view of the tables in `migrations/`, in the shape `diesel print-schema` writes
// (see diesel.toml); the data-layer tests run every mapping here against a migrated database.

diesel::table! {
    merchants (id) {
        id -> Uuid,
        name -> Text,
        persona -> Text,
        ai_enabled -> Bool,
        handoff_message -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        language -> Text,
    }
}

diesel::table! {
    instagram_accounts (merchant_id, instagram_page_id) {
        merchant_id -> Uuid,
        instagram_page_id -> Text,
        username -> Text,
        token_ciphertext -> Nullable<Text>,
        token_expires_at -> Nullable<Timestamptz>,
        token_refreshed_at -> Nullable<Timestamptz>,
        connected_at -> Timestamptz,
        needs_reauth -> Bool,
        subscribed_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        instagram_user_id -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_events (merchant_id, event_id) {
        merchant_id -> Uuid,
        event_id -> Text,
        kind -> Text,
        instagram_page_id -> Text,
        event_time -> Nullable<Timestamptz>,
        received_at -> Timestamptz,
        processed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    conversations (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        instagram_page_id -> Text,
        customer_igsid -> Text,
        needs_human -> Bool,
        paused_until -> Nullable<Timestamptz>,
        last_customer_message_at -> Nullable<Timestamptz>,
        last_event_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        referral_ref -> Nullable<Text>,
        referral_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    messages (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        conversation_id -> Uuid,
        mid -> Text,
        direction -> Text,
        author -> Text,
        text -> Nullable<Text>,
        attachments -> Jsonb,
        sent_at -> Timestamptz,
        is_deleted -> Bool,
        edit_count -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        reply_to -> Nullable<Jsonb>,
        reaction -> Nullable<Text>,
        reaction_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    outbound_messages (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        conversation_id -> Uuid,
        idempotency_key -> Text,
        instagram_page_id -> Text,
        recipient_igsid -> Text,
        part_index -> Int2,
        text -> Text,
        status -> Text,
        send_attempts -> Int4,
        meta_message_id -> Nullable<Text>,
        last_error -> Nullable<Text>,
        sending_started_at -> Nullable<Timestamptz>,
        sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        payload -> Nullable<Jsonb>,
        channel -> Text,
        comment_id -> Nullable<Text>,
    }
}

diesel::table! {
    products (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        sku -> Text,
        name -> Text,
        description -> Text,
        price -> Numeric,
        currency -> Nullable<Text>,
        stock -> Nullable<Int4>,
        url -> Nullable<Text>,
        image_url -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        tags -> Text,
        search_language -> Text,
        embedding -> Nullable<Array<Float4>>,
        embedding_key -> Nullable<Text>,
    }
}

diesel::table! {
    data_deletion_requests (confirmation_code) {
        confirmation_code -> Text,
        subject_sha256 -> Text,
        status -> Text,
        accounts_disconnected -> Int4,
        conversations_deleted -> Int4,
        requested_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    comment_rules (merchant_id) {
        merchant_id -> Uuid,
        enabled -> Bool,
        media_ids -> Array<Text>,
        triggers -> Array<Text>,
        public_reply -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    product_links (merchant_id, kind, key, sku) {
        merchant_id -> Uuid,
        kind -> Text,
        key -> Text,
        sku -> Text,
        position -> Int2,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(instagram_accounts -> merchants (merchant_id));
diesel::joinable!(products -> merchants (merchant_id));
diesel::joinable!(webhook_events -> merchants (merchant_id));

diesel::allow_tables_to_appear_in_same_query!(
    merchants,
    instagram_accounts,
    webhook_events,
    conversations,
    messages,
    outbound_messages,
    products,
    data_deletion_requests,
    comment_rules,
    product_links,
);
