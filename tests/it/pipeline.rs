//! The production pipeline's configuration, checked with the best real
//! tools that run here. Vector, Loki, Tempo and Grafana cannot be installed
//! on these machines, so:
//! - the remap program is compiled and run by the `vrl` crate (Vector's own
//!   VRL compiler) on log lines written by the real server, and the unit
//!   tests in `vector.toml` are run against it the same way;
//! - `docker-compose config -q` (Debian's docker-compose) and `promtool
//!   check config` validate their files;
//! - the Loki, Tempo and Grafana files are parsed and their cross-references
//!   checked (a stand-in for running them, labelled as such).

use crate::common::*;
use futures_util::SinkExt;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use tokio_tungstenite::tungstenite::Message;
use vrl::compiler::{Program, TargetValue, TimeZone, runtime::Runtime};
use vrl::value::{KeyString, Secrets, Value};

fn repo() -> PathBuf {
    crate::common::repo_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn vector_config() -> toml::Table {
    read("vector.toml").parse().expect("vector.toml is TOML")
}

/// The remap program, loaded from the file `vector.toml` names.
pub(crate) fn remap_program() -> (String, Program) {
    let config = vector_config();
    let transform = &config["transforms"]["wstrace_parse"];
    assert_eq!(transform["type"].as_str(), Some("remap"));
    let path = transform["file"].as_str().expect("remap uses file =");
    let source = read(path);
    (path.to_owned(), compile(&source))
}

fn compile(source: &str) -> Program {
    match vrl::compiler::compile(source, &vrl::stdlib::all()) {
        Ok(result) => result.program,
        Err(diagnostics) => panic!(
            "VRL does not compile:\n{}",
            vrl::diagnostic::Formatter::new(source, diagnostics)
        ),
    }
}

/// Runs a program on an event as Vector's remap would; Err on abort/error.
pub(crate) fn run(program: &Program, event: Value) -> Result<Value, String> {
    let mut target = TargetValue {
        value: event,
        metadata: Value::Object(BTreeMap::new()),
        secrets: Secrets::default(),
    };
    let mut runtime = Runtime::default();
    runtime
        .resolve(&mut target, program, &TimeZone::default())
        .map_err(|e| e.to_string())?;
    Ok(target.value)
}

/// What Vector's file source emits for one line.
pub(crate) fn file_event(line: &str) -> Value {
    let mut event = BTreeMap::new();
    event.insert(KeyString::from("message"), Value::from(line));
    event.insert(
        KeyString::from("file"),
        Value::from("/var/log/wstrace/wstrace-1/wstrace.2026-11-23.log"),
    );
    event.insert(KeyString::from("host"), Value::from("vector-host"));
    event.insert(KeyString::from("source_type"), Value::from("file"));
    Value::Object(event)
}

fn field<'a>(event: &'a Value, name: &str) -> Option<&'a Value> {
    event.as_object().and_then(|o| o.get(name))
}

fn text(event: &Value, name: &str) -> Option<String> {
    field(event, name).and_then(|v| v.as_str().map(|s| s.into_owned()))
}

/// Log lines written by the real server: a session with a rejected frame,
/// an echo, and a close.
async fn real_server_lines() -> Vec<String> {
    let mut server = TestServer::start().await;
    let (mut client, response) = server.connect().await;
    assert!(response.headers().contains_key("x-trace-id"));
    next_json(&mut client).await;
    client.send(Message::Text("{bad".into())).await.unwrap();
    next_json(&mut client).await;
    send_json(&mut client, json!({"type": "echo", "content": "hi"})).await;
    next_json(&mut client).await;
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client).await {}
    server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    server.stop().await;
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(server.log_dir()).unwrap() {
        lines.extend(
            std::fs::read_to_string(entry.unwrap().path())
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    lines
}

#[tokio::test]
async fn remap_turns_real_server_lines_into_loki_events() {
    let (path, program) = remap_program();
    assert_eq!(path, "pipeline/vector/wstrace.vrl");
    let lines = real_server_lines().await;
    let mut levels = HashSet::new();
    let mut session_lines = 0;
    let mut flight_lines = 0;
    for line in &lines {
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        let event = run(&program, file_event(line)).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(field(&event, "unparsed").is_none(), "{line}");
        assert_eq!(text(&event, "service").as_deref(), Some("wstrace"));
        let level = text(&event, "level").unwrap();
        let expected = match original["level"].as_u64().unwrap() {
            10 => "trace",
            20 => "debug",
            30 => "info",
            40 => "warn",
            50 => "error",
            other => panic!("level {other}"),
        };
        assert_eq!(level, expected);
        levels.insert(level);
        assert_eq!(text(&event, "message").as_deref(), original["msg"].as_str());
        // The event time is the line's time, not when Vector read it.
        let Some(Value::Timestamp(ts)) = field(&event, "timestamp") else {
            panic!("no timestamp: {event:?}")
        };
        let line_time = original["time"].as_str().unwrap();
        assert_eq!(
            ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            line_time,
            "{line}"
        );
        assert!(field(&event, "time").is_none());
        assert!(field(&event, "v").is_none());
        assert!(
            field(&event, "msg").is_none(),
            "the message once, as message"
        );
        // Structured metadata: exactly the ids the line has.
        let Some(Value::Object(metadata)) = field(&event, "loki_metadata") else {
            panic!("no loki_metadata: {event:?}")
        };
        for id in ["trace_id", "span_id", "session_id", "instance_id"] {
            assert_eq!(
                metadata
                    .get(id)
                    .and_then(|v| v.as_str())
                    .map(|v| v.to_string()),
                original[id].as_str().map(str::to_owned),
                "{id} in {line}"
            );
        }
        assert_eq!(
            text(&event, "instance"),
            original["instance_id"].as_str().map(str::to_owned)
        );
        if let Some(session) = original["session_id"].as_str() {
            session_lines += 1;
            assert_eq!(text(&event, "session_id").as_deref(), Some(session));
            assert_eq!(
                text(&event, "trace_id").as_deref(),
                original["trace_id"].as_str()
            );
            assert_eq!(
                text(&event, "span_id").as_deref(),
                original["span_id"].as_str()
            );
            // The session's attributes ride along.
            assert_eq!(text(&event, "net.peer.ip").as_deref(), Some("127.0.0.1"));
        }
        if original["msg"] == wstrace::events::FlightRecorded::MESSAGE {
            // The recording stays structured: a LogQL `| json` reaches
            // into its entries.
            let Some(Value::Array(entries)) = field(&event, "flight_recorder") else {
                panic!("flight_recorder is not an array: {event:?}")
            };
            assert_eq!(
                entries.len(),
                original["flight.messages"].as_u64().unwrap() as usize
            );
            flight_lines += 1;
        }
        if original["msg"] == wstrace::events::SessionClosed::MESSAGE {
            assert_eq!(
                field(&event, "close_code"),
                Some(&Value::from(1005)),
                "client Close without a code"
            );
            assert_eq!(text(&event, "closed_by").as_deref(), Some("client"));
        }
    }
    assert!(session_lines >= 3, "{lines:?}");
    assert_eq!(flight_lines, 1, "the bad frame wrote the flight recorder");
    assert!(
        levels.contains("info") && levels.contains("warn"),
        "{levels:?}"
    );
}

#[test]
fn remap_flags_lines_that_are_not_json_and_keeps_them() {
    let (_, program) = remap_program();
    for line in [
        "thread 'main' panicked at src/main.rs:10:5",
        "{\"v\":0,\"msg\":\"torn",
        "[1,2,3]",
        "",
    ] {
        let event = run(&program, file_event(line)).expect("never aborts");
        assert_eq!(
            field(&event, "unparsed"),
            Some(&Value::from(true)),
            "{line}"
        );
        assert_eq!(text(&event, "level").as_deref(), Some("unknown"));
        assert_eq!(text(&event, "service").as_deref(), Some("wstrace"));
        assert_eq!(text(&event, "message").as_deref(), Some(line));
        assert!(field(&event, "parse_error").is_some());
        // Its stream is its file's instance; it has no ids, only where it
        // was read.
        assert_eq!(text(&event, "instance").as_deref(), Some("wstrace-1"));
        let metadata = field(&event, "loki_metadata").unwrap().as_object().unwrap();
        let keys: Vec<&str> = metadata.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["collector_host", "file"], "{line}");
    }
}

/// (Vector's file source `max_line_bytes`, Loki's `max_line_size`).
fn line_limits() -> (usize, usize) {
    let config = vector_config();
    let read = config["sources"]["wstrace_files"]["max_line_bytes"]
        .as_integer()
        .unwrap();
    let loki = yaml("pipeline/loki.yaml")["limits_config"]["max_line_size"]
        .as_i64()
        .unwrap();
    (read as usize, loki as usize)
}

/// STAND-IN for Vector's loki sink (Vector cannot be installed here): the
/// line it sends for an event with `encoding.codec = "json"`, that is the
/// event as JSON without `encoding.except_fields` and without `timestamp`
/// (the sink's `remove_timestamp`, on by default).
pub(crate) fn loki_line(event: &Value) -> String {
    let config = vector_config();
    let except: Vec<&str> = config["sinks"]["loki"]["encoding"]["except_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let mut object = event.as_object().unwrap().clone();
    object.retain(|key, _| key.as_str() != "timestamp" && !except.contains(&key.as_str()));
    serde_json::to_string(&Value::Object(object)).unwrap()
}

/// Lines of exactly the length Vector's file source reads, the worst cases
/// for re-encoding (a server line, raw quotes, control characters, escaped
/// quotes inside JSON), each reach Loki no longer than Loki takes, and
/// whole: as they were read, or in base64 saying so.
#[test]
fn a_line_at_vectors_limit_reaches_loki_within_its_limit() {
    use base64::Engine as _;
    let (_, program) = remap_program();
    let (read_limit, loki_limit) = line_limits();
    let fill = |prefix: &str, unit: &str, suffix: &str| {
        let room = read_limit - prefix.len() - suffix.len();
        let body = unit.repeat(room / unit.len());
        let pad = " ".repeat(room - body.len());
        let line = format!("{prefix}{body}{pad}{suffix}");
        assert_eq!(line.len(), read_limit);
        line
    };
    let server_line = |unit: &str| {
        fill(
            r#"{"v":0,"name":"wstrace","msg":"session closed","level":30,"time":"2026-11-23T14:43:39.458625Z","trace_id":"e014116eaee809ea8848fea4b20bf398","session_id":"01a208dc-d33f-715b-ba73-6c598ce9d41c","close_reason":""#,
            unit,
            r#""}"#,
        )
    };
    let lines = [
        server_line("x"),
        server_line(r#"\""#),
        server_line(r#"\u0001"#),
        fill("", "\"", ""),
        fill("", "\u{1}", ""),
        fill("", "\\", ""),
        fill("not json: ", "é", ""),
    ];
    for line in &lines {
        let event = run(&program, file_event(line)).expect("never aborts");
        let sent = loki_line(&event);
        assert!(
            sent.len() <= loki_limit,
            "{} bytes reach Loki for a line starting {:?}",
            sent.len(),
            line.chars().take(12).collect::<String>()
        );
        assert!(!sent.contains(r#""collector_host""#) && !sent.contains(r#""file""#));
        // Nothing is lost: a parsed line keeps its fields, an unparsed one
        // its text, as read or in base64.
        let message = text(&event, "message").unwrap();
        match text(&event, "message_encoding").as_deref() {
            Some("base64") => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(&message)
                    .unwrap();
                assert_eq!(decoded, line.as_bytes());
                assert_eq!(field(&event, "unparsed"), Some(&Value::from(true)));
            }
            Some(other) => panic!("unknown encoding {other}"),
            None if field(&event, "unparsed").is_some() => assert_eq!(&message, line),
            None => {
                assert_eq!(message, "session closed");
                let written: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(
                    text(&event, "close_reason").as_deref(),
                    written["close_reason"].as_str()
                );
            }
        }
    }
}

/// What `vector test` gives the transform: only the input's `log_fields`.
fn test_input_event(message: &str) -> Value {
    Value::Object(BTreeMap::from([(
        KeyString::from("message"),
        Value::from(message),
    )]))
}

/// The `[[tests]]` of vector.toml, run with the vrl crate: each input goes
/// through the remap program, then each VRL condition must hold.
#[test]
fn stand_in_vector_test_runs_the_unit_tests_of_vector_toml() {
    let config = vector_config();
    let (_, program) = remap_program();
    let tests = config["tests"]
        .as_array()
        .expect("vector.toml has [[tests]]");
    assert!(tests.len() >= 3);
    for test in tests {
        let name = test["name"].as_str().unwrap();
        let input = &test["inputs"][0];
        assert_eq!(input["insert_at"].as_str(), Some("wstrace_parse"), "{name}");
        let message = input["log_fields"]["message"].as_str().unwrap();
        let event =
            run(&program, test_input_event(message)).unwrap_or_else(|e| panic!("{name}: {e}"));
        for output in test["outputs"].as_array().unwrap() {
            assert_eq!(output["extract_from"].as_str(), Some("wstrace_parse"));
            for condition in output["conditions"].as_array().unwrap() {
                assert_eq!(condition["type"].as_str(), Some("vrl"));
                let check = compile(condition["source"].as_str().unwrap());
                run(&check, event.clone()).unwrap_or_else(|e| panic!("{name}: {e}\n{event:?}"));
            }
        }
    }
}

#[test]
fn stand_in_vector_config_holds_the_pipeline_settings() {
    let config = vector_config();
    assert!(
        config["data_dir"].as_str().is_some(),
        "checkpoints need a data_dir"
    );
    let source = &config["sources"]["wstrace_files"];
    assert_eq!(source["type"].as_str(), Some("file"));
    assert!(source["include"][0].as_str().unwrap().ends_with("*.log"));
    let transform = &config["transforms"]["wstrace_parse"];
    assert_eq!(transform["inputs"][0].as_str(), Some("wstrace_files"));
    assert_eq!(transform["drop_on_error"].as_bool(), Some(false));
    assert_eq!(transform["drop_on_abort"].as_bool(), Some(false));

    let loki = &config["sinks"]["loki"];
    assert_eq!(loki["type"].as_str(), Some("loki"));
    // An existing Loki from the environment, the stack's by default.
    assert_eq!(
        loki["endpoint"].as_str(),
        Some("${LOKI_ENDPOINT:-http://loki:3100}")
    );
    assert_eq!(loki["tenant_id"].as_str(), Some("${LOKI_TENANT_ID:-}"));
    assert_eq!(loki["auth"]["strategy"].as_str(), Some("basic"));
    assert_eq!(loki["auth"]["user"].as_str(), Some("${LOKI_USER:-}"));
    assert_eq!(
        loki["auth"]["password"].as_str(),
        Some("${LOKI_PASSWORD:-}")
    );
    let labels: HashSet<&str> = loki["labels"]
        .as_table()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(labels, HashSet::from(SINK_LABELS));
    // Structured metadata from the map the program builds (only the ids a
    // line has): no template that can fail on a line without an id.
    let metadata = loki["structured_metadata"].as_table().unwrap();
    assert_eq!(metadata.len(), 1);
    assert_eq!(metadata["*"].as_str(), Some("{{ loki_metadata }}"));
    let except: HashSet<&str> = loki["encoding"]["except_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "loki_metadata",
        "instance",
        "trace_id",
        "span_id",
        "session_id",
    ] {
        assert!(
            except.contains(field),
            "{field} would be in the Loki line too"
        );
    }
    // Snappy (the default) is the protobuf encoding that carries
    // structured metadata.
    assert!(loki.get("compression").is_none());
    // Every line Vector reads, Loki takes, re-encoded (tested at the
    // boundary in `a_line_at_vectors_limit_reaches_loki_within_its_limit`);
    // a whole max-size line fits in a batch.
    let (read_limit, loki_limit) = line_limits();
    assert!(loki_limit >= 2 * read_limit);
    let loki_server = yaml("pipeline/loki.yaml");
    assert_eq!(
        loki_server["limits_config"]["max_line_size_truncate"].as_bool(),
        Some(false)
    );
    assert!(loki["batch"]["max_bytes"].as_integer().unwrap() as usize >= loki_limit);
    // One stream per instance, read oldest file first.
    assert_eq!(source["oldest_first"].as_bool(), Some(true));
    assert_eq!(loki["acknowledgements"]["enabled"].as_bool(), Some(true));
    assert_eq!(loki["buffer"]["type"].as_str(), Some("disk"));
    assert_eq!(loki["buffer"]["when_full"].as_str(), Some("block"));

    let metrics = &config["sinks"]["prometheus"];
    assert_eq!(metrics["type"].as_str(), Some("prometheus_exporter"));
    assert_eq!(
        config["sources"][metrics["inputs"][0].as_str().unwrap()]["type"].as_str(),
        Some("internal_metrics")
    );
}

/// The Loki stream labels the Vector sink sets: the only labels a query may
/// select on.
const SINK_LABELS: [&str; 4] = ["service", "level", "instance", "environment"];
/// Ids that are structured metadata, never stream labels.
const METADATA_IDS: [&str; 4] = ["trace_id", "span_id", "session_id", "instance_id"];

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Stand-in for running Loki: the file parses and says what we rely on.
#[test]
fn stand_in_loki_config_allows_structured_metadata_with_tsdb_v13() {
    let loki = yaml("pipeline/loki.yaml");
    let schema = &loki["schema_config"]["configs"][0];
    assert_eq!(schema["store"].as_str(), Some("tsdb"));
    assert_eq!(schema["schema"].as_str(), Some("v13"));
    assert_eq!(
        loki["limits_config"]["allow_structured_metadata"].as_bool(),
        Some(true)
    );
    assert!(loki["limits_config"]["retention_period"].as_str().is_some());
    assert_eq!(loki["compactor"]["retention_enabled"].as_bool(), Some(true));
    assert_eq!(loki["server"]["http_listen_port"].as_u64(), Some(3100));
}

/// Stand-in for running Tempo: the file parses and says what we rely on.
#[test]
fn stand_in_tempo_config_receives_otlp_and_generates_metrics() {
    let tempo = yaml("pipeline/tempo.yaml");
    let otlp = &tempo["distributor"]["receivers"]["otlp"]["protocols"];
    assert!(
        otlp["grpc"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4317")
    );
    assert!(
        otlp["http"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4318")
    );
    assert_eq!(tempo["storage"]["trace"]["backend"].as_str(), Some("local"));
    let remote = tempo["metrics_generator"]["storage"]["remote_write"][0]["url"]
        .as_str()
        .unwrap();
    assert!(remote.starts_with("http://prometheus:9090/"), "{remote}");
    let processors: Vec<&str> = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(processors.contains(&"service-graphs") && processors.contains(&"span-metrics"));
    assert!(tempo["query_frontend"]["search"].is_mapping());
}

#[test]
fn stand_in_grafana_datasources_link_logs_and_traces_both_ways() {
    let provisioning = yaml("grafana/provisioning/datasources/datasources.yaml");
    let sources = provisioning["datasources"].as_sequence().unwrap();
    let uids: HashSet<&str> = sources.iter().map(|d| d["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, HashSet::from(["prometheus", "loki", "tempo"]));
    let by_uid = |uid: &str| {
        sources
            .iter()
            .find(|d| d["uid"].as_str() == Some(uid))
            .unwrap()
    };

    // Loki → Tempo: a derived field on the trace_id structured metadata.
    let derived = &by_uid("loki")["jsonData"]["derivedFields"][0];
    assert_eq!(derived["datasourceUid"].as_str(), Some("tempo"));
    assert_eq!(derived["matcherType"].as_str(), Some("label"));
    assert_eq!(derived["matcherRegex"].as_str(), Some("trace_id"));

    // Tempo → Loki by trace ID in the span's time window; metrics; map.
    let tempo = &by_uid("tempo")["jsonData"];
    let to_logs = &tempo["tracesToLogsV2"];
    assert_eq!(to_logs["datasourceUid"].as_str(), Some("loki"));
    let query = to_logs["query"].as_str().unwrap();
    assert!(
        query.contains("trace_id=~\"^0*$${__trace.traceId}$$\""),
        "{query}"
    );
    assert!(to_logs["spanStartTimeShift"].as_str().is_some());
    assert_eq!(
        tempo["tracesToMetrics"]["datasourceUid"].as_str(),
        Some("prometheus")
    );
    assert_eq!(
        tempo["serviceMap"]["datasourceUid"].as_str(),
        Some("prometheus")
    );
    assert_eq!(tempo["nodeGraph"]["enabled"].as_bool(), Some(true));
    // Exemplars come from Tempo's span metrics, whose label is `traceID`
    // (Tempo modules/generator/registry/histogram.go).
    let exemplars = by_uid("prometheus")["jsonData"]["exemplarTraceIdDestinations"]
        .as_sequence()
        .unwrap();
    for d in exemplars {
        assert_eq!(d["name"].as_str(), Some("traceID"));
        assert!(uids.contains(d["datasourceUid"].as_str().unwrap()));
    }
}

fn collect_uids(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(ds) = map.get("datasource")
                && let Some(uid) = ds.get("uid").and_then(|u| u.as_str())
            {
                out.push(uid.to_owned());
            }
            map.values().for_each(|v| collect_uids(v, out));
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| collect_uids(v, out)),
        _ => {}
    }
}

#[test]
fn stand_in_grafana_dashboard_uses_provisioned_datasources_and_a_trace_id_box() {
    let provisioning = yaml("grafana/provisioning/datasources/datasources.yaml");
    let uids: HashSet<String> = provisioning["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap().to_owned())
        .collect();
    let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
    let dashboard_dir = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(dashboard_dir, "/var/lib/grafana/dashboards");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/wstrace-sessions.json")).unwrap();
    assert_eq!(dashboard["title"], "WebSocket sessions");
    // Importable into any Grafana: every data source is a datasource
    // variable of its type (no fixed uid), whose default is the uid
    // provisioned here.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let mut used = Vec::new();
    collect_uids(&dashboard["panels"], &mut used);
    assert!(!used.is_empty());
    for uid in &used {
        let name = uid
            .strip_prefix("${")
            .and_then(|u| u.strip_suffix('}'))
            .unwrap_or_else(|| panic!("dashboard names datasource {uid} by a fixed uid"));
        let variable = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(variable["type"], "datasource");
        assert_eq!(
            variable["query"], name,
            "a {name} variable lists {name} sources"
        );
        let default = variable["current"]["value"].as_str().unwrap();
        assert!(
            uids.contains(default),
            "{name} defaults to unknown datasource {default}"
        );
    }
    let explore = dashboard["links"][0]["url"].as_str().unwrap();
    assert!(explore.contains("${tempo}"), "{explore}");
    let variable = &dashboard["templating"]["list"][0];
    assert_eq!(
        (variable["name"].as_str(), variable["type"].as_str()),
        (Some("trace_id"), Some("textbox"))
    );
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let all = exprs.join("\n");
    for metric in [
        "wstrace_sessions_active",
        "wstrace_sessions_closed_total",
        "wstrace_messages_received_total",
        "wstrace_messages_sent_total",
        "wstrace_message_size_bytes_bucket",
        "count_over_time({service=\"wstrace\"}",
        "trace_id=~\"^0*${trace_id:regex}",
    ] {
        assert!(all.contains(metric), "no panel uses {metric}");
    }
    // Every metric a panel queries is one the server exports.
    let families = [
        wstrace::metrics::Metrics::default().families(Default::default()),
        wstrace::telemetry::TelemetryCounters::default().families(),
        wstrace::cluster::ClusterCounters::default().families(true),
    ]
    .concat();
    let exported = wstrace::metrics::render(&families);
    for expr in &exprs {
        for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if name.starts_with("wstrace_") {
                let family = name.trim_end_matches("_bucket");
                assert!(exported.contains(family), "{name} is not exported");
            }
        }
    }
}

/// Runs a validation tool from the repository root and asserts it accepts;
/// false when the tool is absent (and not required, see `which`).
fn tool_accepts(program: &str, args: &[&str]) -> bool {
    let Some(path) = which(program) else {
        return false;
    };
    let output = std::process::Command::new(path)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

/// The secrets `docker-compose.yml` requires (`${VAR:?message}`).
const COMPOSE_SECRETS: [&str; 4] = [
    "REDIS_PASSWORD",
    "WSTRACE_CLUSTER_SECRET",
    "WSTRACE_ADMIN_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
];

fn docker_compose(args: &[&str], secrets: &[&str]) -> Option<std::process::Output> {
    let mut command = std::process::Command::new(which("docker-compose")?);
    command
        .args(["-f", "docker-compose.yml"])
        .args(args)
        .current_dir(repo());
    for name in COMPOSE_SECRETS {
        command.env_remove(name);
    }
    for name in secrets {
        command.env(name, format!("test-{}", name.to_lowercase()));
    }
    Some(command.output().unwrap())
}

#[test]
fn docker_compose_validates() {
    // Without its secrets the stack does not start, and says which.
    let Some(missing) = docker_compose(&["config", "-q"], &COMPOSE_SECRETS[1..]) else {
        return;
    };
    assert!(!missing.status.success(), "started without REDIS_PASSWORD");
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("set REDIS_PASSWORD in .env"), "{said}");
    let valid = docker_compose(&["config", "-q"], &COMPOSE_SECRETS).unwrap();
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    // The resolved file, as docker-compose reads it (anchors merged).
    let resolved = docker_compose(&["config"], &COMPOSE_SECRETS).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_slice(&resolved.stdout).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let instances = ["wstrace-1", "wstrace-2"];
    for name in instances.iter().copied().chain([
        "proxy",
        "redis",
        "vector",
        "loki",
        "tempo",
        "prometheus",
        "grafana",
    ]) {
        let service = &compose["services"][name];
        assert!(service.is_mapping(), "no {name} service");
        assert!(
            service["healthcheck"].is_mapping(),
            "{name} has no healthcheck"
        );
        if !name.starts_with("wstrace") {
            let image = service["image"].as_str().unwrap();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name} image is not pinned: {image}"
            );
        }
    }
    assert!(services.len() >= 9);
    let vector = vector_config();
    let includes: Vec<&str> = vector["sources"]["wstrace_files"]["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut log_dirs = HashSet::new();
    for name in instances {
        let service = &compose["services"][name];
        let env = &service["environment"];
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("http://tempo:4317")
        );
        // Redis needs its password; envelopes are signed with one secret.
        let redis_password = compose["services"]["redis"]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .skip_while(|a| *a != "--requirepass")
            .nth(1)
            .expect("redis runs with --requirepass");
        assert_eq!(redis_password, "test-redis_password");
        assert_eq!(
            env["WSTRACE_REDIS_URL"].as_str(),
            Some(format!("redis://:{redis_password}@redis:6379").as_str())
        );
        assert!(!env["WSTRACE_CLUSTER_SECRET"].as_str().unwrap().is_empty());
        assert_eq!(
            env["WSTRACE_CLUSTER_SECRET"],
            compose["services"][instances[0]]["environment"]["WSTRACE_CLUSTER_SECRET"]
        );
        assert_eq!(env["WSTRACE_INSTANCE_ID"].as_str(), Some(name));
        // The explorer page links to the stack's own Grafana.
        assert_eq!(
            env["WSTRACE_GRAFANA_URL"].as_str(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            service["depends_on"]["redis"]["condition"].as_str(),
            Some("service_healthy")
        );
        // Each instance writes its own directory of the volume Vector
        // reads, and Vector's glob covers it.
        let log_dir = env["WSTRACE_LOG_DIR"].as_str().unwrap();
        assert!(log_dirs.insert(log_dir), "two instances share {log_dir}");
        // The directory is named after the instance: the remap program
        // labels a line it cannot parse with its file's directory.
        assert!(log_dir.ends_with(&format!("/{name}")), "{log_dir}");
        // Resolved volumes read `source:target[:mode]`.
        let volume: Vec<&str> = service["volumes"][0].as_str().unwrap().split(':').collect();
        let (source, target) = (volume[0], volume[1]);
        assert!(log_dir.starts_with(target), "{log_dir} is not in {target}");
        let vector_reads = compose["services"]["vector"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .any(|v| v.starts_with(&format!("{source}:")) && v.ends_with(":ro"));
        assert!(vector_reads, "vector does not read {source}");
        let file = format!("{log_dir}/wstrace.2026-11-23.log");
        assert!(
            includes.iter().any(|glob| glob_matches(glob, &file)),
            "{file} is not in {includes:?}"
        );
    }
    // The proxy's config names the instances, and is the file mounted.
    let proxy = &compose["services"]["proxy"];
    assert!(
        proxy["volumes"][0]
            .as_str()
            .unwrap()
            .contains("pipeline/nginx.conf:/etc/nginx/nginx.conf")
    );
    let nginx = read("pipeline/nginx.conf");
    for name in instances {
        assert!(
            nginx.contains(&format!("server {name}:8080")),
            "{name} not upstream"
        );
    }
    // nginx holds two descriptors per WebSocket: its own limit and the
    // container's must cover 2 × worker_connections.
    let directive = |name: &str| -> u64 {
        nginx
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(';').parse().ok())
            .unwrap_or_else(|| panic!("nginx.conf has no {name}"))
    };
    let needed = 2 * directive("worker_connections");
    assert!(directive("worker_rlimit_nofile") >= needed);
    let nofile = &proxy["ulimits"]["nofile"];
    let soft = nofile["soft"].as_u64().or_else(|| nofile.as_u64()).unwrap();
    assert!(soft >= needed, "proxy nofile {soft} < {needed}");
    // Grafana: the anonymous user is a Viewer that may use Explore (so it
    // can follow every link) and change nothing; the admin password is the
    // operator's; no toggles that Grafana 11 lacks.
    let grafana = &compose["services"]["grafana"]["environment"];
    assert_eq!(grafana["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("true"));
    assert_eq!(
        grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"].as_str(),
        Some("Viewer")
    );
    assert_eq!(grafana["GF_USERS_VIEWERS_CAN_EDIT"].as_str(), Some("true"));
    assert_eq!(
        grafana["GF_SECURITY_ADMIN_PASSWORD"].as_str(),
        Some("test-grafana_admin_password")
    );
    assert!(grafana.get("GF_FEATURE_TOGGLES_ENABLE").is_none());
    // Only the proxy and Grafana are published, on loopback by default.
    for (name, service) in services {
        let published: Vec<String> = service["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|port| serde_yaml::to_string(port).unwrap())
            .collect();
        let name = name.as_str().unwrap();
        match name {
            "proxy" | "grafana" => {
                assert_eq!(published.len(), 1, "{name}: {published:?}");
                // `127.0.0.1:3000:3000/tcp` (short form) or `host_ip: 127.0.0.1`.
                assert!(published[0].contains("127.0.0.1"), "{name}: {published:?}");
            }
            _ => assert!(published.is_empty(), "{name} is published: {published:?}"),
        }
    }
    // The instances trust the proxy's fixed address, and only it; they
    // answer only to the names clients and the scraper use.
    let proxy_address = compose["services"]["proxy"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .unwrap();
    for name in instances {
        let env = &compose["services"][name]["environment"];
        assert_eq!(env["WSTRACE_TRUSTED_PROXIES"].as_str(), Some(proxy_address));
        assert!(env.get("WSTRACE_ALLOWED_ORIGIN").is_none(), "no `*` origin");
        let hosts = env["WSTRACE_ALLOWED_HOST"].as_str().unwrap();
        for host in ["localhost", "proxy", name] {
            assert!(hosts.split(',').any(|h| h == host), "{host} not in {hosts}");
        }
        assert_eq!(
            env["WSTRACE_ADMIN_TOKEN"].as_str(),
            Some("test-wstrace_admin_token")
        );
    }
    // The load generator goes through the proxy, like real clients.
    let load = compose["services"]["load"]["command"]
        .as_sequence()
        .unwrap();
    assert_eq!(load[1].as_str(), Some("ws://proxy:8080/ws"));

    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("USER 10001"),
        "the server runs as non-root"
    );
    assert!(
        dockerfile.matches("FROM ").count() >= 2,
        "multi-stage build"
    );
}

/// Vector's file globs: `*` within one path segment.
fn glob_matches(glob: &str, path: &str) -> bool {
    let (glob, path): (Vec<&str>, Vec<&str>) =
        (glob.split('/').collect(), path.split('/').collect());
    glob.len() == path.len()
        && glob
            .iter()
            .zip(&path)
            .all(|(g, p)| match g.split_once('*') {
                None => g == p,
                Some((prefix, suffix)) => {
                    p.len() >= prefix.len() + suffix.len()
                        && p.starts_with(prefix)
                        && p.ends_with(suffix)
                }
            })
}

#[test]
fn prometheus_config_validates_with_promtool() {
    if !tool_accepts("promtool", &["check", "config", "pipeline/prometheus.yml"]) {
        return;
    }
    let prometheus = yaml("pipeline/prometheus.yml");
    let jobs: HashSet<&str> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    for job in ["wstrace", "vector", "tempo"] {
        assert!(jobs.contains(job), "no scrape job {job}");
    }
}

/// A query as Grafana would run it: where it comes from, its language, and
/// its text with Grafana's variables already substituted.
struct Query {
    origin: String,
    lang: &'static str,
    text: String,
}

const SAMPLE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Grafana's variables, replaced by what Grafana would put there.
fn grafana_substitute(query: &str) -> String {
    query
        .replace("${__trace.traceId}", SAMPLE_TRACE)
        .replace("${trace_id:regex}", SAMPLE_TRACE)
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// The regex of a query's `trace_id=~"…"` filter, with the trace-id
/// variables set to `id` (the LogQL string's `\\` unescaped).
fn trace_id_regex(query: &str, id: &str) -> regex::Regex {
    let set = query
        .replace("$$", "$")
        .replace("${__trace.traceId}", id)
        .replace("${trace_id:regex}", &regex::escape(id));
    let start = set.find("trace_id=~\"").expect("a trace_id regex filter") + 11;
    let end = start + set[start..].find('"').unwrap();
    regex::Regex::new(&set[start..end].replace("\\\\", "\\")).unwrap()
}

/// Whether Loki's `=~` would keep `value` under either reading of a label
/// filter's regex: anchored at both ends (Prometheus matchers) or found
/// anywhere (what Loki 3.4.2 did for structured metadata, issue 32).
/// Returns (anchored, anywhere).
fn loki_matches(re: &regex::Regex, value: &str) -> (bool, bool) {
    let anchored = regex::Regex::new(&format!("^(?:{})$", re.as_str())).unwrap();
    (anchored.is_match(value), re.is_match(value))
}

/// A trace whose id starts with zeros is found from Tempo's trimmed form of
/// it, and the dashboard's trace box matches ids from their start only,
/// whichever way Loki anchors a regex.
#[test]
fn trace_id_queries_find_leading_zero_ids_and_match_from_the_start() {
    let full = "0000c2a1916cd43dd8448eb211c80319";
    let trimmed = full.trim_start_matches('0');
    let other = "0af7651916cd43dd8448eb211c80319c";

    let provisioning = yaml("grafana/provisioning/datasources/datasources.yaml");
    let to_logs = provisioning["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|d| d["jsonData"]["tracesToLogsV2"]["query"].as_str())
        .unwrap();
    for shown in [full, trimmed] {
        let re = trace_id_regex(to_logs, shown);
        assert_eq!(loki_matches(&re, full), (true, true), "{shown} → {re}");
        assert_eq!(loki_matches(&re, other), (false, false), "{re}");
    }
    // Not a longer id that merely ends with the one shown.
    let re = trace_id_regex(to_logs, &full[4..]);
    assert_eq!(
        loki_matches(&re, &format!("1{}", &full[1..])),
        (false, false)
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/wstrace-sessions.json")).unwrap();
    let session_logs = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"].as_str().unwrap().starts_with("Session logs"))
        .unwrap();
    let expr = session_logs["targets"][0]["expr"].as_str().unwrap();
    for typed in [full, trimmed, &full[..8], &trimmed[..8]] {
        let re = trace_id_regex(expr, typed);
        assert_eq!(loki_matches(&re, full), (true, true), "{typed} → {re}");
    }
    // Eight characters from the middle of an id find nothing.
    let re = trace_id_regex(expr, &other[8..16]);
    assert_eq!(loki_matches(&re, other), (false, false), "{re}");
}

/// The Markdown files a user reads: the README and every page of `docs/`.
fn documents() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| format!("docs/{}", path.file_name().unwrap().to_str().unwrap()))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages
}

/// Every LogQL and TraceQL query the project ships: the ```logql and
/// ```traceql blocks of the README and `docs/`, the dashboard's Loki and
/// Tempo targets, the provisioned Tempo → Loki query, and the one
/// `wstrace doctor` runs.
fn shipped_queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for page in documents() {
        let mut fence: Option<&'static str> = None;
        for (number, line) in read(&page).lines().enumerate() {
            match (fence, line.trim()) {
                (None, "```logql") => fence = Some("logql"),
                (None, "```traceql") => fence = Some("traceql"),
                (Some(_), "```") => fence = None,
                (Some(lang), text) if !text.is_empty() => queries.push(Query {
                    origin: format!("{page}:{}", number + 1),
                    lang,
                    text: grafana_substitute(text),
                }),
                _ => {}
            }
        }
    }
    assert!(
        queries
            .iter()
            .any(|q| q.origin.starts_with("docs/pipeline.md")),
        "the pipeline page's queries were read"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/wstrace-sessions.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let kind = target["datasource"]["type"]
                .as_str()
                .or(panel["datasource"]["type"].as_str());
            let (lang, text) = match kind {
                Some("loki") => ("logql", target["expr"].as_str()),
                Some("tempo") if target["queryType"] == "traceql" => {
                    ("traceql", target["query"].as_str())
                }
                _ => continue,
            };
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                queries.push(Query {
                    origin: format!("dashboard panel {:?}", panel["title"]),
                    lang,
                    text: grafana_substitute(text),
                });
            }
        }
    }
    let provisioning = yaml("grafana/provisioning/datasources/datasources.yaml");
    for source in provisioning["datasources"].as_sequence().unwrap() {
        if let Some(query) = source["jsonData"]["tracesToLogsV2"]["query"].as_str() {
            // `$$` is a literal `$` in provisioning files.
            queries.push(Query {
                origin: "datasources.yaml tracesToLogsV2".into(),
                lang: "logql",
                text: grafana_substitute(&query.replace("$$", "$")),
            });
        }
    }
    queries.push(Query {
        origin: "wstrace doctor".into(),
        lang: "logql",
        text: wstrace::tools::doctor::loki_query(SAMPLE_TRACE),
    });
    queries.push(Query {
        origin: "/api/logs with --loki-url".into(),
        lang: "logql",
        text: wstrace::http::loki::loki_query(&SAMPLE_TRACE[..8]),
    });
    queries
}

/// Every shipped query parses with Grafana's own grammars
/// (`@grafana/lezer-logql`, `@grafana/lezer-traceql`, the parsers of
/// Grafana's query editors, run by node), selects only stream labels the
/// Vector sink sets, and filters ids as structured metadata, never as
/// stream labels.
#[test]
fn shipped_queries_parse_with_grafanas_grammars() {
    let queries = shipped_queries();
    assert!(queries.iter().filter(|q| q.lang == "logql").count() >= 7);
    assert!(queries.iter().any(|q| q.lang == "traceql"));
    let Some(node) = which("node") else { return };
    let grammar_dir = repo().join("tests/grammar");
    if !grammar_dir
        .join("node_modules/@grafana/lezer-logql")
        .exists()
    {
        assert!(
            std::env::var_os("WSTRACE_REQUIRE_TOOLS").is_none(),
            "run `npm ci --prefix tests/grammar` (scripts/test.sh does)"
        );
        return;
    }
    let input: Vec<serde_json::Value> = queries
        .iter()
        .map(|q| json!({"lang": q.lang, "query": q.text, "where": q.origin}))
        .collect();
    let parse = |input: &serde_json::Value| -> Vec<serde_json::Value> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&node)
            .arg("check.mjs")
            .current_dir(&grammar_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "check.mjs failed");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let results = parse(&serde_json::Value::Array(input));
    assert_eq!(results.len(), queries.len());
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    for result in &results {
        let (origin, query) = (&result["where"], &result["query"]);
        let errors = strings(&result["errors"]);
        assert!(
            errors.is_empty(),
            "{origin}: {query} does not parse: {errors:?}"
        );
        for label in strings(&result["selectorLabels"]) {
            assert!(
                SINK_LABELS.contains(&label.as_str()),
                "{origin}: {query} selects stream label {label:?}, which Vector never sets"
            );
        }
        let text = query.as_str().unwrap();
        if result["lang"] != "logql" {
            continue;
        }
        for id in METADATA_IDS {
            if text.contains(id) {
                assert!(
                    strings(&result["filterLabels"]).iter().any(|l| l == id),
                    "{origin}: {query} must filter {id} as structured metadata (`| {id}=…`)"
                );
            }
        }
    }
    // The parser is not lenient: a broken query is caught.
    let broken =
        json!([{"lang": "logql", "query": "{service=\"wstrace\" | trace_id=", "where": "x"}]);
    assert!(!parse(&broken)[0]["errors"].as_array().unwrap().is_empty());
}

/// TraceQL in the README and `docs/` names only attributes the server's
/// spans carry.
#[test]
fn readme_traceql_uses_attributes_the_server_sets() {
    let session_span = read("src/session/mod.rs");
    for query in shipped_queries().iter().filter(|q| q.lang == "traceql") {
        for (at, _) in query.text.match_indices("span.") {
            let attribute: String = query.text[at + "span.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            // Declared on the span, or added when it ends (tests/process.rs
            // checks that these reach a real collector).
            assert!(
                session_span.contains(&format!("{attribute} ="))
                    || session_span.contains(&format!("set_attribute(\"{attribute}\""))
                    || session_span.contains(&format!("KeyValue::new(\"{attribute}\"")),
                "{}: {} is not an attribute of ws.session",
                query.origin,
                attribute
            );
        }
    }
}

/// Every relative link in the README and `docs/` names a file that exists
/// (and an anchor, when it has one, a heading of that file), and the README
/// stays a front door.
#[test]
fn documentation_links_resolve() {
    let anchor_of = |heading: &str| -> String {
        heading
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    };
    let mut checked = 0;
    for page in documents() {
        let text = read(&page);
        let base = std::path::Path::new(&page).parent().unwrap().to_path_buf();
        for (at, _) in text.match_indices("](") {
            let target: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http") || target.starts_with('#') || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = base.join(file);
            let linked = std::fs::read_to_string(repo().join(&path))
                .unwrap_or_else(|_| panic!("{page}: link to {target}: no such file"));
            if !anchor.is_empty() {
                let anchors: Vec<String> = linked
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(anchor_of)
                    .collect();
                assert!(
                    anchors.iter().any(|a| a == anchor),
                    "{page}: link to {target}: no such heading in {file} ({anchors:?})"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links found");
    let readme_lines = read("README.md").lines().count();
    assert!(
        readme_lines <= 250,
        "README.md has {readme_lines} lines: move depth into docs/"
    );
}

/// The commands and lists the docs give work as written: every `curl` that
/// sends a body says it is JSON (the admin API answers 415 otherwise), and
/// the list of `closed_by` values is the server's.
#[test]
fn documented_curl_commands_and_close_reasons_match_the_server() {
    let mut bodies = 0;
    for page in documents() {
        let text = read(&page);
        // A command may continue over lines ending in `\`.
        let joined = text.replace("\\\n", " ");
        for line in joined
            .lines()
            .filter(|l| l.trim_start().starts_with("curl "))
        {
            if line.contains(" -d ") || line.contains("--data") {
                bodies += 1;
                assert!(
                    line.contains("Content-Type: application/json"),
                    "{page}: a body without its Content-Type answers 415: {line}"
                );
            }
        }
    }
    assert!(bodies >= 1, "the debug switch's curl was read");
    let protocol = read("docs/protocol.md").replace('\n', " ");
    let start = protocol
        .find("`closed_by` is one of")
        .expect("the list of closed_by values");
    let sentence = &protocol[start..start + protocol[start..].find(". ").unwrap()];
    for by in wstrace::session::close::ClosedBy::ALL {
        assert!(
            sentence.contains(&format!("`{}`", by.as_str())),
            "{} missing: {sentence}",
            by.as_str()
        );
    }
}
