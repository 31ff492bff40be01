//! A container's start inside the guest under QEMU (TCG here, one vCPU), the guest agent's
//! runtime against the guest's crun: the same image booted once per runtime and round
//! (`vessel.runtime=`), the order alternating between rounds so that both share the
//! machine's load alike. Each figure is a call's round trip seen from the host:
//! - create, start: CreateContainer, StartContainer of the VM's first container (`echo`);
//! - first output: from StartContainer sent to the first bytes of the container's stdout;
//! - second create / start: a second container (`sleep`) in the same VM, caches warm;
//! - exec, exec output: ExecProcess of `echo` in it, then its first output.
//!
//! `cargo bench --bench container` (env: `VESSEL_GUEST_DIR`, default build/guest; `N`
//! rounds, default 5; `RUNTIMES`, default `/usr/bin/crun builtin`; `PARAMS`, more kernel
//! parameters, e.g. `vessel.debug=1`; `CONSOLE` set: each guest's console printed).

#[path = "../tests/common/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../tests/common/guest.rs"]
#[allow(dead_code)]
mod guest;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use guest::Guest;
use vessel::protos::{agent as api, agent_ttrpc::AgentClient};

const FIGURES: [&str; 7] = [
    "create",
    "start",
    "first output",
    "second create",
    "second start",
    "exec",
    "exec output",
];

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn container(id: &str) -> api::ContainerRequest {
    api::ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

fn stdio() -> api::Stdio {
    api::Stdio {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// Reads until the process's stdout gives its first bytes.
async fn first_output(client: &AgentClient, id: &str, exec_id: &str) {
    let req = api::ReadStreamRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        max_bytes: 4096,
        ..Default::default()
    };
    loop {
        let chunk = client.read_stdout(ctx(), &req).await.expect("read stdout");
        assert!(!chunk.eof, "{id} {exec_id}: no output");
        if !chunk.data.is_empty() {
            return;
        }
    }
}

async fn timed<T>(figures: &mut Vec<Duration>, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let value = call.await;
    figures.push(started.elapsed());
    value
}

/// One VM with `runtime`: the figures in the order of [`FIGURES`].
async fn round(runtime: &str) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let rootfs = agent::busybox_rootfs(&shared, "pod");
    let params = std::env::var("PARAMS").unwrap_or_default();
    let params = format!("vessel.runtime={runtime} {params}");
    let mut guest = Guest::boot_with(dir.path(), &shared, &params);
    let client = guest.connect(Duration::from_secs(120)).await;
    let mut figures = Vec::new();

    let spec = agent::spec(&["echo", "hello"], false);
    let created = timed(
        &mut figures,
        agent::create(&client, "echo", spec, &rootfs, stdio()),
    )
    .await;
    created.unwrap_or_else(|e| panic!("create: {e:?}\n{}", guest.console_text()));
    let started = Instant::now();
    timed(
        &mut figures,
        client.start_container(ctx(), &container("echo")),
    )
    .await
    .expect("start echo");
    first_output(&client, "echo", "").await;
    figures.push(started.elapsed());
    assert_eq!(agent::wait(&client, "echo", "").await, 0);
    client
        .remove_container(ctx(), &container("echo"))
        .await
        .expect("remove echo");

    let spec = agent::spec(&["sleep", "1000"], false);
    timed(
        &mut figures,
        agent::create(&client, "long", spec, &rootfs, stdio()),
    )
    .await
    .expect("create long");
    timed(
        &mut figures,
        client.start_container(ctx(), &container("long")),
    )
    .await
    .expect("start long");
    let started = Instant::now();
    timed(
        &mut figures,
        agent::exec(&client, "long", "e1", &["echo", "hi"], false, false),
    )
    .await
    .expect("exec");
    first_output(&client, "long", "e1").await;
    figures.push(started.elapsed());
    assert_eq!(agent::wait(&client, "long", "e1").await, 0);
    let kill = api::SignalProcessRequest {
        container_id: "long".into(),
        signal: 9,
        ..Default::default()
    };
    client
        .signal_process(ctx(), &kill)
        .await
        .expect("kill long");
    agent::wait(&client, "long", "").await;
    client
        .remove_container(ctx(), &container("long"))
        .await
        .expect("remove long");
    agent::destroy(&client).await;
    let _ = guest.exited(Duration::from_secs(30)).await;
    if std::env::var_os("CONSOLE").is_some() {
        eprintln!("{}", guest.console_text());
    }
    figures
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let runtimes: Vec<String> = std::env::var("RUNTIMES")
        .unwrap_or_else(|_| "/usr/bin/crun builtin".into())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut results: BTreeMap<&str, Vec<Vec<Duration>>> = BTreeMap::new();
    for i in 0..n {
        let mut order: Vec<&String> = runtimes.iter().collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for runtime in order {
            let figures = round(runtime).await;
            let ms: Vec<u128> = figures.iter().map(Duration::as_millis).collect();
            eprintln!("round {i} {runtime}: {ms:?} ms");
            results.entry(runtime.as_str()).or_default().push(figures);
        }
    }
    println!("\n== a container's start in the guest (QEMU TCG, 1 vCPU, median of N={n}, ms)");
    print!("{:<16}", "");
    for runtime in &runtimes {
        print!(" {runtime:>16}");
    }
    println!();
    for (index, figure) in FIGURES.iter().enumerate() {
        print!("{figure:<16}");
        for runtime in &runtimes {
            let values = results[runtime.as_str()]
                .iter()
                .map(|figures| figures[index])
                .collect();
            print!(" {:>16}", median(values).as_millis());
        }
        println!();
    }
}
