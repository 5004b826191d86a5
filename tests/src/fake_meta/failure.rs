//! Scripted failures and the two error envelopes (Graph and Instagram OAuth) they are made of.

use std::time::Duration;

/// An answer to force on an endpoint instead of its normal one (see
/// [`FakeMeta::fail_next`](super::FakeMeta::fail_next)). Statuses, codes and headers follow
/// meta-platform.md §5.3.
#[derive(Clone, Debug)]
pub enum Failure {
    /// 400, code 190 subcode 463, with `WWW-Authenticate: OAuth "Facebook Platform" "invalid_token" …`.
    TokenExpired,
    /// 400, code 80002 (Instagram BUC), `is_transient`, with an `x-business-use-case-usage` header
    /// for the token's account saying access returns in `minutes`.
    BucThrottle { minutes: u32 },
    /// 403, code 4 ("Application request limit reached"), with `x-app-usage`.
    AppLimit,
    /// 403, code 613 (custom rate limit, the Send API's).
    CustomLimit,
    /// 429 with a code-4 Graph envelope: Meta does not document 429, the service must cope anyway.
    TooManyRequests,
    /// 400, code 10 subcode 2534022: the 24 h messaging window is closed.
    OutsideWindow,
    /// The given 5xx status with a code-2 transient Graph envelope.
    ServerError { status: u16 },
    /// 400 with the Instagram OAuth envelope `{"error_type":"OAuthException","code":400,…}`.
    OAuth { message: String },
    /// Any Graph error envelope (e.g. code 100 subcode 2534014, user not found).
    Graph {
        status: u16,
        code: u32,
        subcode: Option<u32>,
        message: String,
        is_transient: Option<bool>,
    },
    /// Handles the request normally (its effects happen at once, as on Meta's side of a lost
    /// response), then waits this long before answering: a client timeout shorter than this sees
    /// no answer although the work was done.
    Hang(Duration),
    /// Handles the request normally (its effects happen at once), then answers its normal
    /// status and headers with a body that stops half-way and a cut connection: the client knows
    /// the request arrived, not what came of it.
    CutBody,
    /// Handles the request normally, then answers its normal status with a body that is not
    /// the JSON the endpoint documents (a broken proxy, a truncated write).
    GarbledBody,
    /// Exactly this response.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Failure {
    pub fn token_expired() -> Self {
        Self::TokenExpired
    }

    pub fn buc_throttle(minutes: u32) -> Self {
        Self::BucThrottle { minutes }
    }

    pub fn app_limit() -> Self {
        Self::AppLimit
    }

    pub fn custom_limit() -> Self {
        Self::CustomLimit
    }

    pub fn too_many_requests() -> Self {
        Self::TooManyRequests
    }

    pub fn outside_window() -> Self {
        Self::OutsideWindow
    }

    pub fn server_error(status: u16) -> Self {
        Self::ServerError { status }
    }

    pub fn oauth(message: impl Into<String>) -> Self {
        Self::OAuth {
            message: message.into(),
        }
    }

    pub fn graph(status: u16, code: u32, subcode: Option<u32>, message: impl Into<String>) -> Self {
        Self::Graph {
            status,
            code,
            subcode,
            message: message.into(),
            is_transient: None,
        }
    }

    pub fn cut_body() -> Self {
        Self::CutBody
    }

    pub fn garbled_body() -> Self {
        Self::GarbledBody
    }

    pub fn hang(delay: Duration) -> Self {
        Self::Hang(delay)
    }

    pub fn raw(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> Self {
        Self::Raw {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }

    /// The response this failure stands for; `account_id` keys the BUC usage header. `None` for
    /// [`Failure::Hang`], [`Failure::CutBody`] and [`Failure::GarbledBody`], which do the
    /// normal work first.
    pub(crate) fn reply(&self, account_id: &str) -> Option<Reply> {
        let reply = match self {
            Self::TokenExpired => GraphError::new(400, 190, EXPIRED_MESSAGE)
                .subcode(463)
                .www_authenticate("invalid_token")
                .reply(),
            Self::BucThrottle { minutes } => {
                let usage = format!(
                    "{{{}:[{{\"type\":\"instagram\",\"call_count\":100,\"total_cputime\":12,\
                     \"total_time\":15,\"estimated_time_to_regain_access\":{minutes}}}]}}",
                    json_str(account_id)
                );
                GraphError::new(
                    400,
                    80002,
                    "(#80002) There have been too many calls to this Instagram account. Wait a bit \
                     and try again. For more info, please refer to \
                     https://developers.facebook.com/docs/graph-api/overview/rate-limiting.",
                )
                .transient(true)
                .reply()
                .header("x-business-use-case-usage", usage)
            }
            Self::AppLimit => GraphError::new(403, 4, "(#4) Application request limit reached")
                .transient(true)
                .reply()
                .header(
                    "x-app-usage",
                    r#"{"call_count":100,"total_time":41,"total_cputime":37}"#,
                ),
            Self::CustomLimit => GraphError::new(
                403,
                613,
                "(#613) Calls to this api have exceeded the rate limit.",
            )
            .transient(true)
            .reply(),
            Self::TooManyRequests => {
                GraphError::new(429, 4, "(#4) Application request limit reached")
                    .transient(true)
                    .reply()
            }
            Self::OutsideWindow => GraphError::new(
                400,
                10,
                "(#10) This message is sent outside of allowed window.",
            )
            .subcode(2534022)
            .reply(),
            Self::ServerError { status } => GraphError::new(
                *status,
                2,
                "An unexpected error has occurred. Please retry your request later.",
            )
            .transient(true)
            .reply(),
            Self::OAuth { message } => oauth_error(message),
            Self::Graph {
                status,
                code,
                subcode,
                message,
                is_transient,
            } => {
                let mut e = GraphError::new(*status, *code, message);
                e.subcode = *subcode;
                e.is_transient = *is_transient;
                e.reply()
            }
            Self::Hang(_) | Self::CutBody | Self::GarbledBody => return None,
            Self::Raw {
                status,
                headers,
                body,
            } => Reply {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            },
        };
        Some(reply)
    }
}

/// The documented sample text for an expired session (meta-platform.md §5.3).
pub(crate) const EXPIRED_MESSAGE: &str = "Error validating access token: Session has expired on \
     Saturday, 30-Mar-24 16:00:00 PDT. The current time is Sunday, 31-Mar-24 14:58:07 PDT.";

pub(crate) use crate::served::Reply;

/// A JSON response as Meta sends it.
pub(crate) fn json(status: u16, body: String) -> Reply {
    Reply::typed(status, "application/json; charset=UTF-8", body)
}

/// A Graph API error (meta-platform.md §5.3), rendered with Meta's key order.
pub(crate) struct GraphError {
    status: u16,
    code: u32,
    subcode: Option<u32>,
    message: String,
    is_transient: Option<bool>,
    /// The second quoted word of `WWW-Authenticate` (`invalid_token`, `invalid_request`).
    www_authenticate: Option<&'static str>,
}

impl GraphError {
    pub(crate) fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            subcode: None,
            message: message.into(),
            is_transient: None,
            www_authenticate: None,
        }
    }

    pub(crate) fn subcode(mut self, subcode: u32) -> Self {
        self.subcode = Some(subcode);
        self
    }

    pub(crate) fn transient(mut self, transient: bool) -> Self {
        self.is_transient = Some(transient);
        self
    }

    pub(crate) fn www_authenticate(mut self, kind: &'static str) -> Self {
        self.www_authenticate = Some(kind);
        self
    }

    pub(crate) fn reply(&self) -> Reply {
        let mut fields = vec![
            ("message", json_str(&self.message)),
            ("type", json_str("OAuthException")),
            ("code", self.code.to_string()),
        ];
        if let Some(sub) = self.subcode {
            fields.push(("error_subcode", sub.to_string()));
        }
        if let Some(t) = self.is_transient {
            fields.push(("is_transient", t.to_string()));
        }
        fields.push(("fbtrace_id", json_str(&super::server::random_alnum(11))));
        let body = format!("{{\"error\":{}}}", json_object(&fields));
        let reply = json(self.status, body);
        match self.www_authenticate {
            Some(kind) => reply.header(
                "www-authenticate",
                format!(
                    "OAuth \"Facebook Platform\" \"{kind}\" {}",
                    json_str(&self.message)
                ),
            ),
            None => reply,
        }
    }
}

/// The Instagram OAuth endpoint's own envelope (not the Graph one), always HTTP 400.
pub(crate) fn oauth_error(message: &str) -> Reply {
    json(
        400,
        json_object(&[
            ("error_type", json_str("OAuthException")),
            ("code", "400".to_owned()),
            ("error_message", json_str(message)),
        ]),
    )
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `{"k":v,…}` from already-encoded values, in the given order (serde_json's map sorts keys in
/// this workspace, and Meta's bodies are not sorted).
pub(crate) fn json_object(fields: &[(&str, String)]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    format!("{{{}}}", inner.join(","))
}
