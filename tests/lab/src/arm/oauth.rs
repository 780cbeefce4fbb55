//! The OAuth2 token endpoint, client-credentials grant only, in the three shapes Azure Stack
//! Hub clients meet: Azure AD v1 (`/{tenant}/oauth2/token`, `resource=`), Azure AD v2
//! (`/{tenant}/oauth2/v2.0/token`, `scope=<audience>/.default`, what azure_identity 0.21
//! sends) and AD FS (`/adfs/oauth2/token`; tenant `adfs`). Clients prove themselves with a
//! client secret (in the body or HTTP Basic) or a `client_assertion` JWT signed with their
//! registered certificate. Errors carry Azure AD's (or AD FS's) error JSON; none ever repeats
//! what the client sent as a secret.

use super::http::{ArmRequest, RegisteredCredential, Reply, ServerState};
use super::jwt::{x5t_matches, UnverifiedJwt};
use super::IdentitySystem;
use base64::Engine;
use serde_json::json;
use time::OffsetDateTime;

/// The OpenID Connect scopes MSAL sends with every token request.
const OIDC_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on assertion times, as Azure AD tolerates it.
const SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    V1,
    V2,
}

/// Which identity provider answers: decides error and response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    AzureAd,
    Adfs,
}

struct TokenError {
    status: u16,
    error: &'static str,
    code: u32,
    description: String,
}

impl TokenError {
    fn new(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self { status, error, code, description: description.into() }
    }

    fn reply(self, provider: Provider) -> Reply {
        let now = OffsetDateTime::now_utc();
        let trace = uuid::Uuid::new_v4();
        let body = match provider {
            Provider::AzureAd => json!({
                "error": self.error,
                "error_description": format!(
                    "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}\r\nTimestamp: {}",
                    self.code, self.description, now.unix_timestamp()
                ),
                "error_codes": [self.code],
                "timestamp": now.unix_timestamp().to_string(),
                "trace_id": trace.to_string(),
                "correlation_id": trace.to_string(),
                "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
            }),
            Provider::Adfs => json!({
                "error": self.error,
                "error_description": format!("MSIS{}: {}", self.code, self.description),
            }),
        };
        let mut reply = Reply::json(self.status, &body);
        reply.error_code = Some(self.error.to_string());
        reply
    }
}

pub(crate) fn token(state: &ServerState, req: &ArmRequest, tenant: &str, flavor: Flavor) -> Reply {
    let provider = if tenant.eq_ignore_ascii_case("adfs") { Provider::Adfs } else { Provider::AzureAd };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let basic = basic_credentials(req);
    let client_id = field("client_id").map(str::to_string).or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
    match issue(state, req, tenant, flavor, provider, &field, basic.as_ref().map(|(_, s)| s.as_str())) {
        Ok(reply) => reply,
        Err(err) => err.reply(provider),
    }
    .client(client_id)
    .header("pragma", "no-cache")
    .header("cache-control", "no-store")
}

fn basic_credentials(req: &ArmRequest) -> Option<(String, String)> {
    let value = req.header_str("authorization")?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

fn issue<'a>(
    state: &ServerState,
    req: &ArmRequest,
    tenant: &str,
    flavor: Flavor,
    provider: Provider,
    field: &dyn Fn(&str) -> Option<&'a str>,
    basic_secret: Option<&str>,
) -> Result<Reply, TokenError> {
    let config = &state.config;
    let tenant_known = match (provider, config.identity_system) {
        (Provider::Adfs, IdentitySystem::Adfs) => true,
        (Provider::AzureAd, IdentitySystem::AzureAd) => tenant.eq_ignore_ascii_case(&config.tenant_id),
        _ => false,
    };
    if !tenant_known {
        return Err(TokenError::new(
            400,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    if !req.header_str("content-type").is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")) {
        return Err(TokenError::new(400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."));
    }
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(TokenError::new(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{other}'. This stand-in serves client_credentials only."),
            ))
        }
        None => {
            return Err(TokenError::new(400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."))
        }
    }
    let Some(client_id) = field("client_id").map(str::to_string).or_else(|| basic_credentials(req).map(|(id, _)| id)) else {
        return Err(TokenError::new(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."));
    };
    let audience = requested_audience(state, flavor, field)?;
    let Some(principal) = state.principals.get(&client_id.to_ascii_lowercase()) else {
        return Err(TokenError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant."
            ),
        ));
    };

    let secret = field("client_secret").or(basic_secret);
    let assertion = field("client_assertion");
    let method_reference = match (&principal.credential, secret, assertion) {
        (RegisteredCredential::Secret(expected), Some(given), _) => {
            if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                return Err(TokenError::new(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        principal.client_id
                    ),
                ));
            }
            "1"
        }
        (RegisteredCredential::Certificate { der, thumbprint }, _, Some(assertion)) => {
            check_assertion(req, tenant, &principal.client_id, der, thumbprint, field("client_assertion_type"), assertion)?;
            "2"
        }
        (RegisteredCredential::Secret(_), None, Some(_)) => {
            return Err(TokenError::new(
                401,
                "invalid_client",
                700027,
                format!("Client assertion failed signature validation: no certificate is registered on application '{}'.", principal.client_id),
            ))
        }
        (RegisteredCredential::Certificate { .. }, Some(_), None) => {
            return Err(TokenError::new(
                401,
                "invalid_client",
                7000215,
                format!("Invalid client secret provided: application '{}' has no client secret, only a certificate.", principal.client_id),
            ))
        }
        _ => {
            return Err(TokenError::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ))
        }
    };

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = super::token_lifetime(config).as_secs() as i64;
    let issuer = match provider {
        Provider::AzureAd => format!("https://sts.windows.net/{}/", config.tenant_id),
        Provider::Adfs => format!("https://{}/adfs", req.host),
    };
    let object_id = uuid::Uuid::new_v4().to_string();
    let claims = match provider {
        Provider::AzureAd => json!({
            "aud": audience, "iss": issuer, "iat": now, "nbf": now - SKEW_SECS, "exp": now + lifetime,
            "appid": principal.client_id, "appidacr": method_reference, "idp": issuer,
            "oid": object_id, "sub": object_id, "tid": config.tenant_id, "uti": uuid::Uuid::new_v4().to_string(),
            "ver": "1.0",
        }),
        Provider::Adfs => json!({
            "aud": audience, "iss": issuer, "iat": now, "nbf": now - SKEW_SECS, "exp": now + lifetime,
            "appid": principal.client_id, "apptype": "Confidential", "auth_time": now,
            "authmethod": if method_reference == "2" { "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/x509" } else { "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/password" },
            "ver": "1.0",
        }),
    };
    let access_token = state
        .signer
        .mint(&claims)
        .map_err(|e| TokenError::new(500, "server_error", 90000, format!("token signing failed: {e}")))?;
    let body = match (provider, flavor) {
        // v1 writes numbers as strings; v2 and AD FS as numbers.
        (Provider::AzureAd, Flavor::V1) => json!({
            "token_type": "Bearer",
            "expires_in": lifetime.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "not_before": (now - SKEW_SECS).to_string(),
            "resource": audience,
            "access_token": access_token,
        }),
        (Provider::AzureAd, Flavor::V2) => json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }),
        (Provider::Adfs, _) => json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "resource": audience,
        }),
    };
    Ok(Reply::json(200, &body))
}

/// The configured audience named by `resource=` (v1, AD FS) or `scope=<audience>/.default`
/// (v2; AD FS accepts either).
fn requested_audience<'a>(state: &ServerState, flavor: Flavor, field: &dyn Fn(&str) -> Option<&'a str>) -> Result<String, TokenError> {
    let requested = match (flavor, field("resource"), field("scope")) {
        (Flavor::V1, Some(resource), _) => resource.to_string(),
        (_, _, Some(scope)) => {
            // The Microsoft authentication libraries add the OpenID Connect scopes to every
            // request; Azure AD accepts them beside the one `/.default` scope of a
            // client-credentials grant (Microsoft identity platform, "Scopes and permissions":
            // openid, profile, offline_access).
            let scopes: Vec<&str> =
                scope.split(' ').filter(|s| !s.is_empty() && !OIDC_SCOPES.contains(s)).collect();
            let [single] = scopes.as_slice() else {
                return Err(TokenError::new(400, "invalid_scope", 70011, format!("The provided value for the input parameter 'scope' is not valid: '{scope}'. Exactly one <resource>/.default scope is expected.")));
            };
            match single.strip_suffix(".default") {
                Some(resource) => resource.to_string(),
                None => {
                    return Err(TokenError::new(
                        400,
                        "invalid_scope",
                        1002012,
                        format!("The provided value for scope {single} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
                    ))
                }
            }
        }
        (Flavor::V2, Some(resource), None) => resource.to_string(),
        (Flavor::V1, None, None) | (Flavor::V2, None, None) => {
            let param = if flavor == Flavor::V1 { "resource" } else { "scope" };
            return Err(TokenError::new(400, "invalid_request", 900144, format!("The request body must contain the following parameter: '{param}'.")));
        }
    };
    let wanted = requested.trim_end_matches('/');
    state
        .config
        .audiences
        .iter()
        .find(|a| a.trim_end_matches('/').eq_ignore_ascii_case(wanted))
        .cloned()
        .ok_or_else(|| {
            TokenError::new(
                400,
                "invalid_resource",
                500011,
                format!("The resource principal named {requested} was not found in the tenant. The audiences this stamp serves are {:?}.", state.config.audiences),
            )
        })
}

/// Checks a client assertion as Azure AD does: the signing certificate by thumbprint, the
/// signature, issuer and subject equal to the client id, audience the token endpoint, times.
fn check_assertion(
    req: &ArmRequest,
    tenant: &str,
    client_id: &str,
    certificate_der: &[u8],
    thumbprint: &[u8],
    assertion_type: Option<&str>,
    assertion: &str,
) -> Result<(), TokenError> {
    if assertion_type != Some(JWT_BEARER) {
        return Err(TokenError::new(400, "invalid_request", 50027, format!("client_assertion_type must be '{JWT_BEARER}'.")));
    }
    let invalid = |code: u32, description: String| TokenError::new(401, "invalid_client", code, description);
    let jwt = UnverifiedJwt::parse(assertion).map_err(|e| invalid(50027, format!("Invalid JWT token: {e}.")))?;
    let x5t = jwt.header_str("x5t").unwrap_or_default();
    if !x5t_matches(x5t, thumbprint) {
        return Err(invalid(
            700027,
            format!("Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{x5t}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"),
        ));
    }
    jwt.verify_with_certificate(certificate_der)
        .map_err(|e| invalid(700027, format!("Client assertion failed signature validation: {e}.")))?;
    if jwt.claim_str("iss") != Some(client_id) || jwt.claim_str("sub") != Some(client_id) {
        return Err(invalid(700021, "Client assertion application identifier doesn't match 'client_id' parameter.".into()));
    }
    let audience_ok = jwt.claim_str("aud").and_then(|aud| url::Url::parse(aud).ok()).is_some_and(|aud| {
        let path = aud.path().trim_end_matches('/').to_ascii_lowercase();
        let base = format!("/{}/oauth2", tenant.to_ascii_lowercase());
        path == format!("{base}/token") || path == format!("{base}/v2.0/token") || path == req.path.to_ascii_lowercase()
    });
    if !audience_ok {
        return Err(invalid(
            700016,
            format!("Client assertion audience claim {:?} does not name this token endpoint.", jwt.claim_str("aud")),
        ));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let exp = jwt.claim_i64("exp").ok_or_else(|| invalid(700024, "Client assertion has no 'exp' claim.".into()))?;
    let nbf = jwt.claim_i64("nbf").unwrap_or(now);
    if exp + SKEW_SECS < now || nbf - SKEW_SECS > now {
        return Err(invalid(700024, format!("Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}.")));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
