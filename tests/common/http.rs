//! Speaking HTTP to the processes: JSON answers, expected statuses, a client with a key.

/// Sending a request and checking what came back, in one step.
#[allow(async_fn_in_trait)]
pub trait SendJson {
    /// Sends the request and decodes its JSON body, whatever its status.
    async fn send_json(self) -> serde_json::Value;

    /// Sends the request, fails the test (showing the body) unless it is answered `status`,
    /// and returns the JSON body (`Null` when the body is not JSON).
    async fn expect(self, status: reqwest::StatusCode) -> serde_json::Value;
}

impl SendJson for reqwest::RequestBuilder {
    async fn send_json(self) -> serde_json::Value {
        self.send().await.unwrap().json().await.unwrap()
    }

    async fn expect(self, status: reqwest::StatusCode) -> serde_json::Value {
        let r = self.send().await.unwrap();
        let got = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(got, status, "unexpected answer: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

/// A client that sends `token` as `Authorization: Bearer` on every request.
pub fn bearer(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// A client that sends `key` in `X-API-Key` on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}
