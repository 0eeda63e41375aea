//! rotor's rotation function (`rotator/`, issue 10) end to end on the test
//! bed: a RotatedSecret whose `rotation.lambdaArn` names a moto Lambda
//! function (`provided.al2023`) that runs the real `bootstrap` from its zip
//! under hack/moto_server.py's emulated Lambda Runtime API, against the test
//! bed's real PostgreSQL 15 and MariaDB (TLS verified against the test bed's
//! CA). The chain: `rotor.dev/rotate-now` → rotor calls RotateSecret (moto's
//! patched one: asynchronous, retrying) → the function's four steps change
//! the database password → AWSCURRENT moves → rotor mirrors it into the
//! Kubernetes Secret → the consumer Deployment rolls.
//!
//! The function's zip is made from `target/debug/bootstrap`, which the root
//! package's tests do not build: `hack/test.sh` builds it (`cargo nextest run
//! --no-run -p rotator ... --tests` builds rotator's binaries for its own
//! integration tests). Without it, or when it is older than rotator's
//! sources, these tests fail and say how to build it.
//!
//! A prober (there is no kubelet) runs on the host, reads the mirrored Secret
//! through the API and logs in with it, to count failed connections across
//! back-to-back rotations. The figures are printed (`eprintln`, shown by
//! `cargo nextest run --no-capture`, or on failure) and recorded in
//! BENCHMARKS.md ("Rotation function end to end").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use mysql_async::prelude::Queryable;
use rotator::db::{Db, Login};
use rotator::secret::{Engine, Password};
use rotor::api::{RotatedSecret, VERSION_ID_ANNOTATION};
use rotor::k8s::rollout::annotation_key;
use serde_json::{Value, json};
// The databases' ports, admins, CA and admin SQL: the harness shared with
// rotator's own tests.
use testbed::db::{admin as db_admin, admin_sql, ca as ca_file, db, port as db_port};

use crate::common::{Env, condition, testbed};

// ------------------------------------------------------------ test bed

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ms(d: f64) -> i64 {
    (d * 1000.0).round() as i64
}

fn suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}

// ------------------------------------------------------------ databases

/// Logs in over verified TLS and runs `SELECT 1`, with rotator's own login
/// code (what the function's testSecret does; what an application does).
async fn login(db: &Db, user: &str, password: &str) -> Result<(), String> {
    let pw = Password::new(password.to_owned());
    let l = Login {
        host: "127.0.0.1",
        port: db_port(db.engine),
        dbname: (db.engine == Engine::Postgres).then_some("postgres"),
        ssl: true,
        username: user,
        password: &pw,
    };
    db.check_login(&l).await.map_err(|e| e.to_string())
}

/// A database user for one test with a known first password; on MariaDB
/// also a database it may read (so grants are copied to the clone).
async fn create_db_user(engine: Engine, sfx: &str) -> (String, String) {
    let user = format!("e2e_{sfx}");
    let password = format!("Initial-{sfx}-Pw1!");
    match engine {
        Engine::Postgres => {
            admin_sql(
                engine,
                &[format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'")],
            )
            .await;
        }
        _ => {
            admin_sql(
                engine,
                &[
                    format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
                    format!("CREATE DATABASE IF NOT EXISTS d_{sfx}"),
                    format!("GRANT SELECT ON d_{sfx}.* TO '{user}'@'%'"),
                ],
            )
            .await;
        }
    }
    (user, password)
}

// ------------------------------------------------------------ moto Lambda

/// `curl` against moto, off the async runtime; returns (HTTP status, body).
async fn curl(args: Vec<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "120"])
            .args(&args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    })
    .await
    .unwrap()
}

/// moto picks the service from the SigV4 credential scope; it does not
/// check signatures.
fn auth(service: &str) -> String {
    format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// `target/debug/bootstrap` (next to the rotor binary under test), checked
/// to exist and to be newer than rotator's sources.
fn bootstrap_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_rotor")).with_file_name("bootstrap");
    let how = "build it with `cargo build -p rotator --bin bootstrap` (hack/test.sh builds it with \
               `cargo nextest run --no-run -p rotator --lib --bins --tests`)";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {how}", bin.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rotator");
    let mut stack = vec![root.join("src"), root.join("Cargo.toml")];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) {
            assert!(
                m <= built,
                "{} is older than {}: {how}",
                bin.display(),
                p.display()
            );
        }
    }
    bin
}

/// The zip Lambda gets (hack/lambda_zip.py), base64 for CreateFunction.
fn zip_base64() -> &'static str {
    static ZIP: OnceLock<String> = OnceLock::new();
    ZIP.get_or_init(|| {
        use base64::Engine as _;
        let bin = bootstrap_binary();
        let zip = testbed().dir.join(format!("rotator-e2e-{}.zip", suffix()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/lambda_zip.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&bin)
            .arg(&zip)
            .output()
            .expect("run python3 hack/lambda_zip.py");
        assert!(
            out.status.success(),
            "hack/lambda_zip.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&zip).expect("zip");
        let _ = std::fs::remove_file(&zip);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    })
}

/// A moto Lambda function running the real `bootstrap`.
struct Function {
    name: String,
    arn: String,
}

impl Function {
    async fn create(sfx: &str, env_vars: Value) -> Function {
        let endpoint = testbed().aws_endpoint.clone();
        let role = format!("rotor-rotator-e2e-{sfx}");
        let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
        let (code, body) = curl(vec![
            "-X".into(),
            "POST".into(),
            format!("{endpoint}/"),
            "-H".into(),
            auth("iam"),
            "--data-urlencode".into(),
            "Action=CreateRole".into(),
            "--data-urlencode".into(),
            "Version=2010-05-08".into(),
            "--data-urlencode".into(),
            format!("RoleName={role}"),
            "--data-urlencode".into(),
            format!("AssumeRolePolicyDocument={policy}"),
        ])
        .await;
        assert_eq!(code, 200, "iam:CreateRole on moto: {body}");
        let name = format!("rotor-rotator-e2e-{sfx}");
        let mut vars = json!({"DB_CA_FILE": ca_file(), "RUST_LOG": "info"});
        vars.as_object_mut()
            .unwrap()
            .extend(env_vars.as_object().unwrap().clone());
        let req = json!({
            "FunctionName": name, "Runtime": "provided.al2023", "Handler": "bootstrap",
            "Role": format!("arn:aws:iam::123456789012:role/{role}"),
            "Code": {"ZipFile": zip_base64()}, "Timeout": 30, "MemorySize": 128,
            "Architectures": ["x86_64"], "Environment": {"Variables": vars},
        });
        let file = testbed().dir.join(format!("create-function-{sfx}.json"));
        std::fs::write(&file, req.to_string()).unwrap();
        let (code, body) = curl(vec![
            "-X".into(),
            "POST".into(),
            format!("{endpoint}/2015-03-31/functions"),
            "-H".into(),
            auth("lambda"),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            format!("@{}", file.display()),
        ])
        .await;
        let _ = std::fs::remove_file(&file);
        assert!(
            code == 200 || code == 201,
            "lambda:CreateFunction on moto: {code} {body}"
        );
        let arn = serde_json::from_str::<Value>(&body).expect("CreateFunction answer")["FunctionArn"]
            .as_str()
            .expect("FunctionArn")
            .to_owned();
        Function { name, arn }
    }

    /// Every invocation of this function (hack/moto_server.py's record).
    async fn invocations(&self) -> Vec<Value> {
        let url = format!(
            "{}/rotor-test/invocations?function={}",
            testbed().aws_endpoint,
            self.name
        );
        let (code, body) = curl(vec![url]).await;
        assert_eq!(code, 200, "GET /rotor-test/invocations: {body}");
        serde_json::from_str(&body).expect("invocations JSON")
    }

    /// The bootstrap's output (moto's runtime writes it next to the unpacked zip).
    fn log(&self) -> String {
        let mut out = String::new();
        for dir in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !dir
                .file_name()
                .to_string_lossy()
                .starts_with("rotor-moto-lambda-")
            {
                continue;
            }
            for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}-", self.name)) && n.ends_with(".log") {
                    out += &std::fs::read_to_string(f.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Everything useful when a wait times out.
async fn dump(env: &Env, rs: &str, f: &Function) -> String {
    let status = env.rs_api().get(rs).await.ok().map(|r| r.status);
    format!(
        "status: {}\ninvocations: {}\nfunction log (tail):\n{}\nrotor log (tail):\n{}",
        serde_json::to_string_pretty(&status).unwrap(),
        serde_json::to_string_pretty(&f.invocations().await).unwrap(),
        tail(&f.log(), 40),
        tail(&env.rotor.as_ref().map(|r| r.logs()).unwrap_or_default(), 60)
    )
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after
/// `timeout` with the object's status, the invocations and both logs.
async fn wait_for<T, Fut>(
    env: &Env,
    rs: &str,
    f: &Function,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what} ({}/{rs})\n{}",
                env.ns,
                dump(env, rs, f).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------ AWS / Kubernetes

async fn stages(env: &Env, secret: &str) -> BTreeMap<String, Vec<String>> {
    env.sm
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .expect("DescribeSecret")
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn with_stage(stages: &BTreeMap<String, Vec<String>>, stage: &str) -> Option<String> {
    stages
        .iter()
        .find(|(_, s)| s.iter().any(|s| s == stage))
        .map(|(v, _)| v.clone())
}

async fn value_of(env: &Env, secret: &str, version: &str) -> Value {
    let out = env
        .sm
        .get_secret_value()
        .secret_id(secret)
        .version_id(version)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetSecretValue {version}: {e:?}"));
    serde_json::from_str(out.secret_string().expect("string secret")).expect("JSON secret")
}

fn creds(v: &Value) -> (String, String) {
    (
        v["username"].as_str().expect("username").to_owned(),
        v["password"].as_str().expect("password").to_owned(),
    )
}

/// The mirrored Secret as a consumer sees it: (rotor.dev/version-id, data).
async fn k8s_secret(env: &Env, name: &str) -> Option<(String, BTreeMap<String, String>)> {
    let s = env.secret_api().get_opt(name).await.ok()??;
    let version = s
        .metadata
        .annotations
        .as_ref()?
        .get(VERSION_ID_ANNOTATION)?
        .clone();
    let data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    Some((version, data))
}

fn deployments(env: &Env) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("apps", "v1", "Deployment");
    Api::namespaced_with(env.client.clone(), &env.ns, &ApiResource::from_gvk(&gvk))
}

/// A Deployment taking every key of Secret `secret` as environment variables.
async fn create_consumer(env: &Env, name: &str, secret: &str) {
    let labels = json!({"app": name});
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                                     "envFrom": [{"secretRef": {"name": secret}}]}]},
        }},
    }))
    .unwrap();
    deployments(env)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
}

/// (metadata.generation, pod-template annotation `rotor.dev/<secret>`).
async fn consumer_state(env: &Env, name: &str, secret: &str) -> (i64, Option<String>) {
    let d = deployments(env).get(name).await.expect("get Deployment");
    let rolled = d.data["spec"]["template"]["metadata"]["annotations"][annotation_key(secret)]
        .as_str()
        .map(str::to_owned);
    (d.metadata.generation.expect("generation"), rolled)
}

async fn annotate_rotate_now(env: &Env, rs: &str, token: &str) {
    let patch = json!({"metadata": {"annotations": {"rotor.dev/rotate-now": token}}});
    env.rs_api()
        .patch(rs, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate rotor.dev/rotate-now");
}

fn cond_true(rs: &RotatedSecret, type_: &str) -> bool {
    condition(rs, type_).is_some_and(|c| c.status == "True")
}

// ------------------------------------------------------------ one world

#[derive(Clone, Copy, PartialEq, Debug)]
enum Strategy {
    Single,
    Alternating,
}

/// One test's chain: database user, moto function, rotor, RotatedSecret,
/// consumer Deployment.
struct Chain {
    env: Env,
    engine: Engine,
    f: Function,
    rs: String,
    deploy: String,
    /// The AWS secret's name.
    aws: String,
    user: String,
    password: String,
    db: Db,
}

impl Chain {
    async fn new(engine: Engine, strategy: Strategy, fn_env: Value) -> Chain {
        let sfx = suffix();
        let mut env = Env::new().await;
        let (user, password) = create_db_user(engine, &sfx).await;
        let f = Function::create(&sfx, fn_env).await;
        let rs = "db".to_owned();
        let aws = env.aws_name("db");
        let mut template = json!({
            "engine": engine.to_string(), "host": "127.0.0.1", "port": db_port(engine),
            "username": user, "password": password, "ssl": true,
        });
        if engine == Engine::Postgres {
            template["dbname"] = json!("postgres");
        }
        if strategy == Strategy::Alternating {
            let (mu, mp) = db_admin(engine);
            let master = env
                .sm
                .create_secret()
                .name(env.aws_name("master"))
                .secret_string(
                    json!({"engine": engine.to_string(), "host": "127.0.0.1", "port": db_port(engine),
                           "username": mu, "password": mp})
                    .to_string(),
                )
                .send()
                .await
                .expect("create the master secret");
            template["masterarn"] = json!(master.arn().unwrap());
        }
        // Secrets Manager's rotation events, as an EventBridge rule would
        // route them: moto sends them to this queue, rotor reads it.
        let (_, queue) = crate::common::queue("rotor-chain").await;
        crate::common::moto_test(
            "POST",
            "/rotor-test/event-queues",
            Some(&json!({"QueueUrl": queue})),
        );
        env.start_rotor(&["--events-queue-url", &queue]);
        env.rotor.as_ref().unwrap().wait_ready().await;
        let deploy = "app".to_owned();
        create_consumer(&env, &deploy, &rs).await;
        env.apply_rs(
            &rs,
            json!({
                "secretsManager": {"name": aws, "initialValue": {"template": template}},
                "rotation": {"lambdaArn": f.arn, "schedule": "rate(30 days)"},
                "refreshInterval": "1s",
            }),
        )
        .await;
        let chain = Chain {
            env,
            engine,
            f,
            rs,
            deploy,
            aws,
            user,
            password,
            db: db(engine),
        };
        chain
            .wait(
                "Ready and Synced with rotation configured",
                Duration::from_secs(60),
                || async {
                    let rs = chain.env.rs_api().get(&chain.rs).await.ok()?;
                    (cond_true(&rs, "Ready")
                        && cond_true(&rs, "Synced")
                        && condition(&rs, "RotationConfigured").is_some_and(|c| c.reason == "Configured"))
                    .then_some(())
                },
            )
            .await;
        chain
    }

    async fn wait<T, Fut>(&self, what: &str, timeout: Duration, check: impl FnMut() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        wait_for(&self.env, &self.rs, &self.f, what, timeout, check).await
    }

    async fn fail(&self, what: &str) -> ! {
        panic!(
            "timed out waiting for {what} ({}/{})\n{}",
            self.env.ns,
            self.rs,
            dump(&self.env, &self.rs, &self.f).await
        )
    }

    async fn current(&self) -> String {
        with_stage(&stages(&self.env, &self.aws).await, "AWSCURRENT").expect("AWSCURRENT")
    }

    async fn secret(&self) -> (String, BTreeMap<String, String>) {
        k8s_secret(&self.env, &self.rs)
            .await
            .expect("the mirrored Secret")
    }

    /// One rotation through rotor: annotate, then wait for every stage of
    /// the chain (AWSCURRENT, Secret, Deployment), timing each.
    async fn rotate(&self, token: &str) -> Rotation {
        let before = self.current().await;
        let (gen_before, _) = consumer_state(&self.env, &self.deploy, &self.rs).await;
        let annotated = now_s();
        annotate_rotate_now(&self.env, &self.rs, token).await;
        // Secret and Deployment watched every 20 ms, for when they changed.
        let (mut secret_at, mut rolled_at, mut version) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(90);
        while rolled_at.is_none() {
            if secret_at.is_none()
                && let Some((v, _)) = k8s_secret(&self.env, &self.rs).await
                && v != before
            {
                secret_at = Some(now_s());
                version = Some(v);
            }
            if let Some(v) = &version
                && consumer_state(&self.env, &self.deploy, &self.rs)
                    .await
                    .1
                    .as_deref()
                    == Some(v)
            {
                rolled_at = Some(now_s());
                break;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "rotation {token}: Secret updated ({secret_at:?}) and Deployment rolled"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let version = version.unwrap();
        let current = self.current().await;
        assert_eq!(current, version, "the Secret holds AWSCURRENT");
        assert_ne!(current, before, "AWSCURRENT is a new version");
        let rs = self.env.rs_api().get(&self.rs).await.unwrap();
        let st = rs.status.clone().unwrap();
        let called: f64 = st
            .rotate_now_time
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_nanosecond() as f64 / 1e9)
            .expect("status.rotateNowTime");
        assert_eq!(st.rotate_now_token.as_deref(), Some(token));
        let inv: Vec<Value> = self
            .f
            .invocations()
            .await
            .into_iter()
            .filter(|i| i["token"] == json!(version))
            .collect();
        let step = |s: &str| {
            inv.iter()
                .rfind(|i| i["step"] == s && i["outcome"] == "ok")
                .unwrap_or_else(|| panic!("no successful {s} for {version}: {inv:?}"))
                .clone()
        };
        let (set, finish) = (step("setSecret"), step("finishSecret"));
        let create = step("createSecret");
        let at = |i: &Value| i["at"].as_f64().unwrap();
        let dur = |i: &Value| i["durationMs"].as_i64().unwrap();
        let function_ms: i64 = inv.iter().filter(|i| i["outcome"] == "ok").map(dur).sum();
        let (gen_after, _) = consumer_state(&self.env, &self.deploy, &self.rs).await;
        Rotation {
            token: token.to_owned(),
            before,
            version,
            annotated,
            called,
            create_started: at(&create) - dur(&create) as f64 / 1000.0,
            set_started: at(&set) - dur(&set) as f64 / 1000.0,
            set_done: at(&set),
            current_at: at(&finish),
            secret_at: secret_at.unwrap(),
            rolled_at: rolled_at.unwrap(),
            function_ms,
            cold: create["cold"].as_bool().unwrap_or(false),
            cold_create_ms: dur(&create),
            generation_bump: gen_after - gen_before,
        }
    }
}

/// One rotation's timeline (epoch seconds) and what the function took.
#[derive(Debug, Clone)]
struct Rotation {
    token: String,
    before: String,
    version: String,
    annotated: f64,
    /// RotateSecret returned (status.rotateNowTime).
    called: f64,
    create_started: f64,
    /// setSecret started: somewhere in it the single user's old password
    /// starts being refused.
    set_started: f64,
    /// setSecret returned.
    set_done: f64,
    /// finishSecret returned: AWSCURRENT moved.
    current_at: f64,
    /// First seen in the Kubernetes Secret (20 ms polling).
    secret_at: f64,
    /// First seen on the Deployment's pod template (20 ms polling).
    rolled_at: f64,
    /// The four steps' durations, as Lambda bills them.
    function_ms: i64,
    cold: bool,
    cold_create_ms: i64,
    generation_bump: i64,
}

impl Rotation {
    fn line(&self) -> String {
        format!(
            "{}: annotate→RotateSecret returned {} ms | RotateSecret returned→createSecret started {} ms | RotateSecret→AWSCURRENT {} ms | AWSCURRENT→Secret {} ms | \
             Secret→rolled {} ms | total {} ms | function {} ms (4 steps{}) | setSecret→Secret {} ms",
            self.token,
            ms(self.called - self.annotated),
            ms(self.create_started - self.called),
            ms(self.current_at - self.called),
            ms(self.secret_at - self.current_at),
            ms(self.rolled_at - self.secret_at),
            ms(self.rolled_at - self.annotated),
            self.function_ms,
            if self.cold {
                format!(", cold start: createSecret {} ms", self.cold_create_ms)
            } else {
                String::new()
            },
            ms(self.secret_at - self.set_done),
        )
    }
}

// ------------------------------------------------------------ 1. PostgreSQL single user

/// RotatedSecret → rotate-now → RotateSecret → bootstrap's four steps →
/// PostgreSQL password changed → AWSCURRENT → Secret → Deployment, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_chain_postgres_single_user() {
    let c = Chain::new(Engine::Postgres, Strategy::Single, json!({})).await;
    let (v0, data0) = c.secret().await;
    assert_eq!(
        data0.get("password"),
        Some(&c.password),
        "the Secret starts with the initial value"
    );
    login(&c.db, &c.user, &c.password)
        .await
        .expect("the initial password logs in");
    let (gen0, rolled0) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    let r = c.rotate("t1").await;
    eprintln!("whole chain, postgres single: {}", r.line());
    let new = value_of(&c.env, &c.aws, &r.version).await;
    let (u1, p1) = creds(&new);
    assert_eq!(u1, c.user, "single user: same user");
    assert_ne!(p1, c.password, "a new password");
    let (v1, data1) = c.secret().await;
    assert_ne!(v1, v0);
    assert_eq!(v1, r.version, "rotor.dev/version-id is the new AWSCURRENT");
    assert_eq!(
        data1.get("password"),
        Some(&p1),
        "the Secret holds the new password"
    );
    login(&c.db, &u1, &p1)
        .await
        .expect("the database accepts the new password");
    let old = login(&c.db, &c.user, &c.password).await;
    assert!(old.is_err(), "single user: the old password is refused");
    // Exactly one roll, also after a while (no second restart).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (gen1, rolled1) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    assert_ne!(rolled0.as_deref(), Some(r.version.as_str()));
    assert_eq!(
        rolled1.as_deref(),
        Some(r.version.as_str()),
        "pod template names the new version"
    );
    assert_eq!(gen1 - gen0, 1, "the Deployment rolled exactly once");
    assert_eq!(r.generation_bump, 1);
    let ok: Vec<_> =
        c.f.invocations()
            .await
            .into_iter()
            .filter(|i| i["token"] == json!(r.version))
            .collect();
    assert_eq!(
        ok.iter().map(|i| i["step"].as_str().unwrap()).collect::<Vec<_>>(),
        ["createSecret", "setSecret", "testSecret", "finishSecret"],
        "one attempt, four steps: {ok:?}"
    );
    c.env.assert_no_leak(&[&p1, &c.password]).await;
}

// ------------------------------------------------------------ 2. MariaDB alternating users

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_chain_mariadb_alternating_users() {
    let c = Chain::new(Engine::Mariadb, Strategy::Alternating, json!({})).await;
    let (v0, _) = c.secret().await;
    let (gen0, _) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    let r = c.rotate("t1").await;
    eprintln!("whole chain, mariadb alternating: {}", r.line());
    let (u1, p1) = creds(&value_of(&c.env, &c.aws, &r.version).await);
    assert_eq!(u1, format!("{}_clone", c.user), "alternating: the clone user");
    let (v1, data1) = c.secret().await;
    assert_ne!(v1, v0);
    assert_eq!(v1, r.version);
    assert_eq!(data1.get("username"), Some(&u1));
    assert_eq!(data1.get("password"), Some(&p1));
    login(&c.db, &u1, &p1)
        .await
        .expect("the new user logs in with the new password");
    login(&c.db, &c.user, &c.password)
        .await
        .expect("alternating: the previous user still works with the previous password");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (gen1, rolled1) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    assert_eq!(rolled1.as_deref(), Some(r.version.as_str()));
    assert_eq!(gen1 - gen0, 1, "the Deployment rolled exactly once");
    // And back: the base user gets a new password, the clone keeps its own.
    let r2 = c.rotate("t2").await;
    eprintln!("whole chain, mariadb alternating: {}", r2.line());
    let (u2, p2) = creds(&value_of(&c.env, &c.aws, &r2.version).await);
    assert_eq!(u2, c.user, "second rotation: back to the base user");
    login(&c.db, &u2, &p2).await.expect("base user, new password");
    login(&c.db, &u1, &p1)
        .await
        .expect("AWSPREVIOUS (the clone) still works");
    assert!(
        login(&c.db, &c.user, &c.password).await.is_err(),
        "the base user's first password is gone"
    );
    let (gen2, rolled2) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    assert_eq!(rolled2.as_deref(), Some(r2.version.as_str()));
    assert_eq!(gen2 - gen1, 1, "one more roll for the second version");
    c.env.assert_no_leak(&[&p1, &p2, &c.password]).await;
}

// ------------------------------------------------------------ 3. the prober

#[derive(Default)]
struct ProbeCounts {
    attempts: AtomicU64,
    /// Logins refused with the credentials just read from the Secret.
    raw_failures: AtomicU64,
    /// Still refused after re-reading the Secret and retrying at once.
    after_immediate_retry: AtomicU64,
    /// Still refused after the one retry a client makes once the Secret has
    /// a new version (re-read until it changes, then retry once).
    after_retry: AtomicU64,
    secret_reads_failed: AtomicU64,
    long_queries: AtomicU64,
    long_failures: AtomicU64,
    /// Failed logins that were not a password refusal (timeouts, I/O).
    not_refusals: AtomicU64,
    slowest_login_ms: AtomicU64,
    /// Ticks that found MAX_IN_FLIGHT probes still running.
    skipped_ticks: AtomicU64,
    /// (Secret read, login refused) of each refused login, epoch seconds.
    failures: Mutex<Vec<(f64, f64)>>,
    errors: Mutex<Vec<String>>,
}

struct Prober {
    counts: Arc<ProbeCounts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn read_creds(
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
) -> Option<(String, String, String)> {
    let s = secrets.get(name).await.ok()?;
    let v = s
        .metadata
        .annotations
        .as_ref()?
        .get(VERSION_ID_ANNOTATION)?
        .clone();
    let data = s.data?;
    let get = |k: &str| data.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    Some((v, get("username")?, get("password")?))
}

/// One new connection with the credentials the Secret holds now; when it
/// is refused, what a client that re-reads the Secret does.
async fn probe(cnt: &ProbeCounts, db: &Db, secrets: &Api<k8s_openapi::api::core::v1::Secret>, name: &str) {
    let read_at = now_s();
    let Some((version, user, password)) = read_creds(secrets, name).await else {
        cnt.secret_reads_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    cnt.attempts.fetch_add(1, Ordering::Relaxed);
    let t = Instant::now();
    let r = login(db, &user, &password).await;
    cnt.slowest_login_ms
        .fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
    let Err(e) = r else {
        return;
    };
    if !(e.contains("28P01") || e.contains("error 1045")) {
        cnt.not_refusals.fetch_add(1, Ordering::Relaxed);
    }
    cnt.raw_failures.fetch_add(1, Ordering::Relaxed);
    cnt.failures.lock().unwrap().push((read_at, now_s()));
    cnt.errors
        .lock()
        .unwrap()
        .push(format!("new connection ({version}): {e}"));
    // Re-read and retry at once.
    let immediate = match read_creds(secrets, name).await {
        Some((_, u, p)) => login(db, &u, &p).await.is_ok(),
        None => false,
    };
    if immediate {
        return;
    }
    cnt.after_immediate_retry.fetch_add(1, Ordering::Relaxed);
    // The one retry: once the Secret has moved on from the version that
    // was refused (re-read every 50 ms, at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        match read_creds(secrets, name).await {
            Some(c) if c.0 != version => break Some(c),
            _ if Instant::now() > deadline => break None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let ok = match fresh {
        Some((_, u, p)) => login(db, &u, &p).await,
        None => Err("the Secret did not change within 30 s".to_owned()),
    };
    if let Err(e) = ok {
        cnt.after_retry.fetch_add(1, Ordering::Relaxed);
        cnt.errors
            .lock()
            .unwrap()
            .push(format!("after re-read and retry: {e}"));
    }
}

impl Prober {
    /// (a) every 20 ms a new connection with the credentials the Secret holds
    /// now (read through the API each time); (b) one connection opened now,
    /// querying `SELECT 1` every 50 ms.
    async fn start(c: &Chain) -> Prober {
        let counts = Arc::new(ProbeCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let secrets = c.env.secret_api();
        let name = c.rs.clone();
        let (_, user, password) = read_creds(&secrets, &name)
            .await
            .expect("the Secret to probe with");
        let mut tasks = Vec::new();

        // (b) the long-lived connection, opened with the first credentials.
        let engine = c.engine;
        let (cnt, st) = (counts.clone(), stop.clone());
        let port = db_port(engine);
        enum Long {
            Pg(tokio_postgres::Client),
            My(mysql_async::Conn),
        }
        let mut long = match engine {
            Engine::Postgres => Long::Pg(
                testbed::db::pg_plain(&user, &password)
                    .await
                    .expect("long-lived PostgreSQL connection"),
            ),
            _ => {
                let pem = std::fs::read(ca_file()).unwrap();
                let ssl = mysql_async::SslOpts::default()
                    .with_root_certs(vec![pem.into()])
                    .with_disable_built_in_roots(true);
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(port)
                    .user(Some(user.clone()))
                    .pass(Some(password.clone()))
                    .prefer_socket(false)
                    .ssl_opts(Some(ssl));
                Long::My(
                    mysql_async::Conn::new(opts)
                        .await
                        .expect("long-lived MariaDB connection"),
                )
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let r = match &mut long {
                    Long::Pg(c) => c
                        .simple_query("SELECT 1")
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Long::My(c) => c.query_drop("SELECT 1").await.map_err(|e| e.to_string()),
                };
                cnt.long_queries.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    cnt.long_failures.fetch_add(1, Ordering::Relaxed);
                    cnt.errors.lock().unwrap().push(format!("long-lived: {e}"));
                }
            }
        }));

        // (a) a new connection every 20 ms, each in a task of its own so
        // that a slow login (PostgreSQL's SCRAM in a debug build, on a
        // loaded machine) does not slow the pace; at most MAX_IN_FLIGHT at
        // once, a tick finding them all busy is counted as skipped.
        // A slow login is not a failed one: on 2 loaded cores a PostgreSQL
        // login (SCRAM, debug build) was seen to take over 5 s.
        let db = Db {
            timeout: Duration::from_secs(30),
            ..c.db.clone()
        };
        let (cnt, st) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            const MAX_IN_FLIGHT: usize = 4;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut probes = tokio::task::JoinSet::new();
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                while probes.try_join_next().is_some() {}
                if probes.len() >= MAX_IN_FLIGHT {
                    cnt.skipped_ticks.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (cnt, db, secrets, name) = (cnt.clone(), db.clone(), secrets.clone(), name.clone());
                probes.spawn(async move { probe(&cnt, &db, &secrets, &name).await });
            }
            while probes.join_next().await.is_some() {}
        }));
        Prober { counts, stop, tasks }
    }

    async fn stop(self) -> Arc<ProbeCounts> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("prober task");
        }
        self.counts
    }
}

async fn prober(engine: Engine, strategy: Strategy) {
    let c = Chain::new(engine, strategy, json!({})).await;
    let (gen0, _) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    let p = Prober::start(&c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut rotations = Vec::new();
    for i in 1..=3 {
        // Back to back: the next rotate-now as soon as the previous version
        // has reached the Deployment.
        rotations.push(c.rotate(&format!("probe-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    let n = p.stop().await;
    let (gen3, _) = consumer_state(&c.env, &c.deploy, &c.rs).await;

    let label = format!("{engine} {strategy:?}");
    let failures = n.failures.lock().unwrap().clone();
    eprintln!("=== prober, {label}: 3 rotations in {} ms", elapsed.as_millis());
    for r in &rotations {
        eprintln!("  {}", r.line());
    }
    // The failure window per rotation: from setSecret to the Secret update,
    // and the refused logins that fell in it.
    let mut in_windows = 0;
    for r in &rotations {
        let inside = failures
            .iter()
            // Read before the Secret had the new version, refused after
            // setSecret had changed the password.
            .filter(|(read, refused)| *read <= r.secret_at + 0.05 && *refused >= r.set_started - 0.05)
            .count();
        in_windows += inside;
        eprintln!(
            "  {}: window setSecret (start..end)→Secret {}..{} ms, {} refused new connections in it",
            r.token,
            ms(r.secret_at - r.set_started),
            ms(r.secret_at - r.set_done),
            inside
        );
    }
    eprintln!(
        "  new connections: {} attempts, {} refused ({} within the windows), {} still refused after an \
         immediate re-read and retry, {} after re-read-and-retry once the Secret changed; {} failed Secret \
         reads; {} ticks skipped (4 probes in flight)",
        n.attempts.load(Ordering::Relaxed),
        n.raw_failures.load(Ordering::Relaxed),
        in_windows,
        n.after_immediate_retry.load(Ordering::Relaxed),
        n.after_retry.load(Ordering::Relaxed),
        n.secret_reads_failed.load(Ordering::Relaxed),
        n.skipped_ticks.load(Ordering::Relaxed),
    );
    eprintln!(
        "  of the refused: {} not a password refusal (timeout, I/O); slowest login {} ms",
        n.not_refusals.load(Ordering::Relaxed),
        n.slowest_login_ms.load(Ordering::Relaxed)
    );
    eprintln!(
        "  long-lived connection: {} queries, {} failed",
        n.long_queries.load(Ordering::Relaxed),
        n.long_failures.load(Ordering::Relaxed)
    );
    let errors = n.errors.lock().unwrap().clone();
    for e in errors.iter().take(5) {
        eprintln!("  e.g. {e}");
    }

    assert!(n.attempts.load(Ordering::Relaxed) >= 20, "the prober ran");
    assert!(
        n.long_queries.load(Ordering::Relaxed) >= 20,
        "the long-lived connection ran"
    );
    assert_eq!(
        n.long_failures.load(Ordering::Relaxed),
        0,
        "{label}: the long-lived connection never fails: {errors:?}"
    );
    assert_eq!(gen3 - gen0, 3, "{label}: one roll per rotation");
    for r in &rotations {
        assert_eq!(r.generation_bump, 1, "{label}: {} rolled once", r.token);
    }
    match strategy {
        Strategy::Alternating => {
            assert_eq!(
                n.raw_failures.load(Ordering::Relaxed),
                0,
                "{label}: alternating users: no refused connection at all: {errors:?}"
            );
        }
        Strategy::Single => {
            assert_eq!(
                n.raw_failures.load(Ordering::Relaxed) as usize,
                in_windows,
                "{label}: every refused login falls between setSecret and the Secret update: {errors:?}"
            );
            assert_eq!(
                n.after_retry.load(Ordering::Relaxed),
                0,
                "{label}: none after one re-read-and-retry: {errors:?}"
            );
        }
    }
    // The last credentials work; each rotation was a new version.
    let (_, data) = c.secret().await;
    login(&c.db, &data["username"], &data["password"])
        .await
        .expect("final credentials");
    let mut versions: Vec<_> = rotations.iter().map(|r| r.version.clone()).collect();
    versions.extend(rotations.first().map(|r| r.before.clone()));
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), 4, "three new versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prober_postgres_single_user() {
    prober(Engine::Postgres, Strategy::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prober_postgres_alternating_users() {
    prober(Engine::Postgres, Strategy::Alternating).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prober_mariadb_single_user() {
    prober(Engine::Mariadb, Strategy::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prober_mariadb_alternating_users() {
    prober(Engine::Mariadb, Strategy::Alternating).await;
}

// ------------------------------------------------------------ 4. a fault during setSecret

/// The database refuses the password change: the user's sessions are made
/// read-only (`ALTER ROLE ... SET default_transaction_read_only = on`), so
/// it still logs in and runs `SELECT 1`, but its `ALTER ROLE ... PASSWORD`
/// in setSecret fails. The rotation fails and is retried; AWSCURRENT never
/// points at a password the database refuses; the Secret keeps the working
/// value. Then the fault goes, the stuck AWSPENDING label is removed (AWS's
/// documented recovery) and the next rotate-now rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_secret_refused_by_the_database() {
    let c = Chain::new(Engine::Postgres, Strategy::Single, json!({})).await;
    let (v0, data0) = c.secret().await;
    let (gen0, _) = consumer_state(&c.env, &c.deploy, &c.rs).await;
    admin_sql(
        Engine::Postgres,
        &[format!(
            "ALTER ROLE {} SET default_transaction_read_only = on",
            c.user
        )],
    )
    .await;
    annotate_rotate_now(&c.env, &c.rs, "fault-1").await;
    c.wait("rotor to call RotateSecret", Duration::from_secs(30), || async {
        let rs = c.env.rs_api().get(&c.rs).await.ok()?;
        (rs.status.as_ref()?.rotate_now_token.as_deref() == Some("fault-1")).then_some(())
    })
    .await;
    let token = c
        .wait("AWSPENDING on a new version", Duration::from_secs(30), || async {
            with_stage(&stages(&c.env, &c.aws).await, "AWSPENDING").filter(|v| *v != v0)
        })
        .await;
    // The rotation fails at setSecret and is retried from createSecret; wait
    // until moto gives up (no new invocation for 5 s), checking on the way
    // that AWSCURRENT stays and the current password keeps working.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut last_count, mut quiet_since) = (0, Instant::now());
    let failed: Vec<Value> = loop {
        let inv: Vec<Value> =
            c.f.invocations()
                .await
                .into_iter()
                .filter(|i| i["token"] == json!(token))
                .collect();
        assert_eq!(
            c.current().await,
            v0,
            "AWSCURRENT never moves to the refused password"
        );
        if inv.len() != last_count {
            last_count = inv.len();
            quiet_since = Instant::now();
        }
        if inv.len() >= 2 && quiet_since.elapsed() > Duration::from_secs(5) {
            break inv;
        }
        if Instant::now() > deadline {
            c.fail("the retried rotation to give up").await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let attempts: Vec<i64> = failed.iter().filter_map(|i| i["attempt"].as_i64()).collect();
    eprintln!(
        "fault: {} invocations for {token}: {}",
        failed.len(),
        failed
            .iter()
            .map(|i| format!(
                "attempt {} {} {} ({})",
                i["attempt"],
                i["step"],
                i["outcome"],
                i["error"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(
        attempts.iter().max() >= Some(&2),
        "the rotation was retried: {failed:?}"
    );
    for i in &failed {
        assert!(
            i["step"] == "createSecret" || i["step"] == "setSecret",
            "nothing after setSecret ran: {i}"
        );
        if i["step"] == "setSecret" {
            assert_eq!(i["outcome"], "error", "{i}");
            let err = i["error"].as_str().unwrap();
            assert!(err.starts_with("setSecretFailed"), "{err}");
            assert!(
                err.contains("read-only transaction"),
                "the message names the check: {err}"
            );
        }
    }
    // AWSCURRENT is still the first version, the database still takes its
    // password and refuses the pending one; the Secret keeps the working value.
    let st = stages(&c.env, &c.aws).await;
    assert_eq!(with_stage(&st, "AWSCURRENT").as_deref(), Some(v0.as_str()));
    assert_eq!(with_stage(&st, "AWSPENDING").as_deref(), Some(token.as_str()));
    login(&c.db, &c.user, &c.password)
        .await
        .expect("the current password still logs in");
    let (pu, pp) = creds(&value_of(&c.env, &c.aws, &token).await);
    assert!(
        login(&c.db, &pu, &pp).await.is_err(),
        "the pending password was never set"
    );
    let (v, data) = c.secret().await;
    assert_eq!(
        (v.as_str(), &data),
        (v0.as_str(), &data0),
        "the Secret keeps the working value"
    );
    assert_eq!(consumer_state(&c.env, &c.deploy, &c.rs).await.0, gen0, "no roll");
    let rs = c.env.rs_api().get(&c.rs).await.unwrap();
    assert!(cond_true(&rs, "Synced"), "Synced stays True");
    let reasons: Vec<String> = c
        .env
        .events()
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    // Secrets Manager's RotationFailed event (sent by moto to rotor's queue)
    // makes rotor say so on the object, while the mirror goes on.
    let rs = c
        .env
        .wait_condition(&c.rs, "RotationConfigured", "False", "RotationFailed")
        .await;
    assert_eq!(condition(&rs, "Ready").unwrap().status, "False");
    assert!(cond_true(&rs, "Synced"), "Synced stays True");
    assert!(!reasons.iter().any(|r| r == "RolledOut"), "nothing rolled");

    // A new rotate-now while AWSPENDING sits on another version: RotateSecret
    // refuses ("A previous rotation isn't complete"); rotor keeps asking.
    annotate_rotate_now(&c.env, &c.rs, "fault-2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rs = c.env.rs_api().get(&c.rs).await.unwrap();
    eprintln!(
        "fault: after rotate-now fault-2: rotateNowToken {:?}, conditions {}",
        rs.status.as_ref().and_then(|s| s.rotate_now_token.clone()),
        serde_json::to_string(&rs.status.as_ref().map(|s| &s.conditions)).unwrap()
    );
    assert_eq!(c.current().await, v0);

    // Recovery, as AWS documents it: fix the database, take AWSPENDING off
    // the failed version; rotor's pending rotate-now then goes through.
    admin_sql(
        Engine::Postgres,
        &[format!(
            "ALTER ROLE {} RESET default_transaction_read_only",
            c.user
        )],
    )
    .await;
    c.env
        .sm
        .update_secret_version_stage()
        .secret_id(&c.aws)
        .version_stage("AWSPENDING")
        .remove_from_version_id(&token)
        .send()
        .await
        .expect("remove AWSPENDING from the failed version");
    let (v1, data1) = c
        .wait(
            "the rotation after recovery to reach the Secret",
            Duration::from_secs(90),
            || async { k8s_secret(&c.env, &c.rs).await.filter(|(v, _)| *v != v0) },
        )
        .await;
    assert_eq!(c.current().await, v1);
    login(&c.db, &data1["username"], &data1["password"])
        .await
        .expect("the recovered rotation's password works");
    assert!(login(&c.db, &c.user, &c.password).await.is_err());
    c.wait(
        "the Deployment to roll once for the recovered version",
        Duration::from_secs(30),
        || async {
            let (g, r) = consumer_state(&c.env, &c.deploy, &c.rs).await;
            (r.as_deref() == Some(v1.as_str())).then_some(g)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        consumer_state(&c.env, &c.deploy, &c.rs).await.0 - gen0,
        1,
        "one roll in all"
    );
    // The rotation that succeeded clears the report.
    let rs = c.env.wait_condition(&c.rs, "Ready", "True", "Ready").await;
    assert_ne!(
        condition(&rs, "RotationConfigured").unwrap().reason,
        "RotationFailed"
    );
}
