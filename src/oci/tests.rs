//! Conversion of whole specs: fields, the seed's defects, and no panic on any input.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResources, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use proptest::prelude::*;

use super::*;

fn runtime() -> RuntimeConfig {
    let mut runtime = RuntimeConfig::default();
    runtime.hypervisor_config.virtio_fs_daemon = "/usr/libexec/virtiofsd".into();
    runtime
}

fn message<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn spec_from_json(json: &str) -> Spec {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn container_fields() {
    let spec = spec_from_json(
        r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "pod",
        "process": {
            "terminal": true,
            "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]},
            "args": ["sh", "-c", "true"],
            "env": ["PATH=/bin", "A=b=c", "NOEQ"],
            "cwd": "/work",
            "noNewPrivileges": true,
            "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]}
        },
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data"}],
        "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                               "fileMode": 438, "uid": 0, "gid": 0}]}
    }"#,
    );
    let c = container_config(&spec, Path::new("/b"), "c1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.id, "c1");
    assert_eq!(
        c.rootfs,
        RootFs {
            target: "/b/rootfs".into(),
            mounted: true
        }
    );
    assert!(c.readonly_rootfs);
    assert_eq!(c.cmd.args, ["sh", "-c", "true"]);
    let envs: Vec<(&str, &str)> = c
        .cmd
        .envs
        .iter()
        .map(|e| (e.var.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(envs, [("PATH", "/bin"), ("A", "b=c")]);
    assert_eq!(c.cmd.work_dir, "/work");
    assert_eq!(
        (c.cmd.user.as_str(), c.cmd.primary_group.as_str()),
        ("1000", "100")
    );
    assert_eq!(c.cmd.supplementary_groups, ["5", "6"]);
    assert!(c.cmd.interactive && c.cmd.detach && c.cmd.no_new_privileges);
    assert_eq!(c.cmd.console, "");
    let caps = c.cmd.capabilities.clone().unwrap_or_default();
    assert_eq!(caps.bounding, ["CAP_CHOWN", "CAP_KILL"]);
    assert!(caps.effective.is_empty());
    assert_eq!(c.mounts.len(), 2);
    assert_eq!(
        c.mounts[1],
        Mount {
            source: String::new(),
            destination: "/data".into(),
            fs_type: String::new(),
            options: vec![]
        }
    );
    assert_eq!(
        c.device_infos,
        [DeviceInfo {
            container_path: "/dev/fuse".into(),
            dev_type: "c".into(),
            major: 10,
            minor: 229,
            uid: 0,
            gid: 0,
            file_mode: 438,
        }]
    );
    assert_eq!(c.resources, LinuxResources::default());
    assert_eq!(c.custom_spec, spec);
    assert_eq!(
        c.annotations
            .get(annotations::BUNDLE_PATH_KEY)
            .map(String::as_str),
        Some("/b")
    );
    assert_eq!(
        c.annotations
            .get(annotations::CONTAINER_TYPE_KEY)
            .map(String::as_str),
        Some("pod_sandbox")
    );
    let json = serde_json::to_value(&c).unwrap_or_default();
    assert_eq!(json["rootfs"]["target"], "/b/rootfs");
    assert_eq!(json["mounts"][0]["type"], "proc");
    assert_eq!(json["cmd"]["envs"][1]["var"], "A");
}

#[test]
fn absolute_root_is_kept() {
    let mut spec = Spec::default();
    spec.set_root(RootBuilder::default().path("/abs/rootfs").build().ok());
    let c = container_config(&spec, Path::new("/b"), "c").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.rootfs.target, "/abs/rootfs");
}

#[test]
fn missing_sections_are_clear_errors() {
    let mut spec = Spec::default();
    spec.set_process(None);
    assert!(message(container_config(&spec, Path::new("/b"), "c")).contains("`process`"));
    assert!(message(sandbox_config(&spec, &runtime(), Path::new("/b"), "c")).contains("`process`"));
    let mut spec = Spec::default();
    spec.set_root(None);
    assert!(message(container_config(&spec, Path::new("/b"), "c")).contains("`root`"));
    let mut spec = Spec::default();
    spec.set_linux(None);
    assert!(message(sandbox_config(&spec, &runtime(), Path::new("/b"), "c")).contains("`linux`"));
}

#[test]
fn missing_resources_is_the_oci_default() {
    let spec = spec_from_json(
        r#"{"root":{"path":"r"},"process":{"user":{"uid":0,"gid":0},"cwd":"/"},"linux":{}}"#,
    );
    let c = container_config(&spec, Path::new("/b"), "c").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.resources, LinuxResources::default());
    assert!(c.device_infos.is_empty());
}

#[test]
fn minimal_json_spec_converts() {
    let spec = spec_from_json(
        r#"{"ociVersion":"1.0.0","root":{"path":"r"},"process":{"user":{"uid":0,"gid":0},"cwd":"/"},"linux":{}}"#,
    );
    let s =
        sandbox_config(&spec, &runtime(), Path::new("/b"), "s").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.shm_size, 0);
    assert_eq!(s.hostname, "");
    assert!(s.containers[0].cmd.args.is_empty());
    assert!(s.containers[0].cmd.capabilities.is_none());
    assert!(!s.containers[0].readonly_rootfs);
}

#[test]
fn device_rules() {
    let device = |typ, path: &str| {
        LinuxDeviceBuilder::default()
            .typ(typ)
            .path(path)
            .build()
            .ok()
    };
    for (typ, path, field) in [
        (LinuxDeviceType::A, "/dev/x", "linux.devices[0].type"),
        (LinuxDeviceType::C, "", "linux.devices[0].path"),
    ] {
        let mut spec = Spec::default();
        let devices: Vec<_> = device(typ, path).into_iter().collect();
        spec.set_linux(LinuxBuilder::default().devices(devices).build().ok());
        let e = message(container_config(&spec, Path::new("/b"), "c"));
        assert!(e.contains(field), "{e}");
    }
    let e = message(container_config(
        &spec_from_json(
            r#"{"root":{"path":"r"},"process":{"user":{"uid":0,"gid":0},"cwd":"/"},"linux":{"devices":[{"path":"/dev/a","type":"a"}]}}"#,
        ),
        Path::new("/b"),
        "c",
    ));
    assert!(e.contains("accepted: c, b, u, p"), "{e}");
    for typ in [
        LinuxDeviceType::B,
        LinuxDeviceType::C,
        LinuxDeviceType::U,
        LinuxDeviceType::P,
    ] {
        let mut spec = Spec::default();
        let devices: Vec<_> = device(typ, "/dev/y").into_iter().collect();
        spec.set_linux(LinuxBuilder::default().devices(devices).build().ok());
        let c = container_config(&spec, Path::new("/b"), "c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.device_infos[0].dev_type, typ.as_str());
    }
}

#[test]
fn env_with_empty_name_is_an_error() {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .user(UserBuilder::default().build().unwrap_or_default())
        .cwd("/")
        .env(vec!["=x".to_owned()])
        .build()
        .ok();
    spec.set_process(process);
    assert!(message(container_config(&spec, Path::new("/b"), "c")).contains("process.env[0]"));
}

fn with_mounts(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
    let mut spec = Spec::default();
    spec.set_mounts(Some(mounts));
    spec
}

fn shm_mount(typ: &str, source: &str) -> oci_spec::runtime::Mount {
    MountBuilder::default()
        .destination("/dev/shm")
        .typ(typ)
        .source(source)
        .build()
        .unwrap_or_default()
}

#[test]
fn shm_size_rules() {
    let rt = runtime();
    let size = |spec: &Spec| sandbox_config(spec, &rt, Path::new("/b"), "s").map(|s| s.shm_size);
    assert_eq!(size(&with_mounts(vec![])).ok(), Some(0));
    assert_eq!(
        size(&with_mounts(vec![shm_mount("tmpfs", "shm")])).ok(),
        Some(DEFAULT_SHM_SIZE)
    );
    assert_eq!(DEFAULT_SHM_SIZE, 64 * 1024 * 1024);
    assert_eq!(
        size(&with_mounts(vec![shm_mount("bind", "/dev/shm")])).ok(),
        Some(DEFAULT_SHM_SIZE)
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = dir.path().to_string_lossy().into_owned();
    let stat = nix::sys::statfs::statfs(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let want = u64::try_from(stat.block_size()).unwrap_or(0) * stat.blocks();
    assert_eq!(
        size(&with_mounts(vec![shm_mount("bind", &src)])).ok(),
        Some(want)
    );
    let e = message(size(&with_mounts(vec![shm_mount(
        "bind",
        "/nonexistent/shm",
    )])));
    assert!(
        e.contains("/dev/shm") && e.contains("/nonexistent/shm"),
        "{e}"
    );
}

#[test]
fn sandbox_fields() {
    let mut spec = Spec::default();
    let ns = |typ, path: Option<&str>| {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build().ok(),
            None => b.build().ok(),
        }
    };
    let namespaces: Vec<_> = [
        ns(LinuxNamespaceType::Network, Some("/run/netns/a")),
        ns(LinuxNamespaceType::Pid, Some("/proc/1/ns/pid")),
        ns(LinuxNamespaceType::Network, Some("")),
    ]
    .into_iter()
    .flatten()
    .collect();
    spec.set_linux(LinuxBuilder::default().namespaces(namespaces).build().ok());
    spec.set_hostname(Some("host".into()));
    let mut rt = runtime();
    rt.disable_new_netns = true;
    rt.sandbox_cgroup_only = true;
    rt.disable_guest_seccomp = true;
    rt.inter_network_model = InterworkingModel::Macvtap;
    rt.hypervisor_config.memory_size = 2048;
    let s = sandbox_config(&spec, &rt, Path::new("/b"), "sb").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.id, "sb");
    assert_eq!(s.hostname, "host");
    assert_eq!(
        s.network_config,
        NetworkConfig {
            net_ns_path: "/run/netns/a".into(),
            disable_new_netns: true,
            interworking_model: InterworkingModel::Macvtap,
        }
    );
    assert!(s.sandbox_cgroup_only && s.disable_guest_seccomp);
    assert_eq!(s.containers.len(), 1);
    assert_eq!(s.containers[0].cmd.console, "");
    assert!(s.containers[0].cmd.detach);
    assert_eq!(s.hypervisor_config.memory_size, 2048);
    let json = serde_json::to_value(&s).unwrap_or_default();
    assert_eq!(json["network_config"]["net_ns_path"], "/run/netns/a");
    assert_eq!(json["hypervisor_config"]["memory_size"], 2048);
    assert!(json["hypervisor_config"].get("msize_9p").is_some());
    assert_eq!(json["hypervisor_config"]["shared_fs"], "virtio-fs");
    assert_eq!(json["hypervisor_type"], "qemu");
}

#[test]
fn unknown_container_type_fails_the_sandbox() {
    let mut spec = Spec::default();
    spec.set_annotations(Some(HashMap::from([(
        "io.kubernetes.cri.container-type".to_owned(),
        "vm".to_owned(),
    )])));
    let e = message(sandbox_config(&spec, &runtime(), Path::new("/b"), "s"));
    assert!(
        e.contains("io.kubernetes.cri.container-type") && e.contains("sandbox, container"),
        "{e}"
    );
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

prop_compose! {
    /// Specs built from arbitrary optional sections.
    fn arb_spec()(
        root in opt((".{0,12}", opt(any::<bool>()))),
        process in opt((opt(proptest::collection::vec(".{0,12}", 0..4)), any::<u32>(), any::<u32>(),
                        opt(proptest::collection::vec(any::<u32>(), 0..3)), ".{0,8}", opt(any::<bool>()))),
        linux in opt((opt(proptest::collection::vec((0u8..5, ".{0,10}", any::<i64>()), 0..3)),
                      opt(proptest::collection::vec((any::<bool>(), opt(".{0,10}")), 0..3)),
                      any::<bool>())),
        mounts in opt(proptest::collection::vec((prop_oneof![Just("/dev/shm".to_owned()), ".{0,10}"],
                                                 opt(prop_oneof![Just("bind".to_owned()), ".{0,6}"]),
                                                 opt(".{0,12}")), 0..3)),
        hostname in opt(".{0,10}"),
        annotations in opt(proptest::collection::hash_map(
            prop_oneof![Just("io.kubernetes.cri.container-type".to_owned()),
                        Just("io.kubernetes.docker.type".to_owned()),
                        Just("io.kubernetes.cri.sandbox-id".to_owned()), ".{0,10}"],
            prop_oneof![Just("sandbox".to_owned()), Just("container".to_owned()), ".{0,10}"], 0..4)),
    ) -> Spec {
        let mut spec = Spec::default();
        spec.set_root(root.and_then(|(path, ro)| {
            let b = RootBuilder::default().path(path);
            match ro { Some(r) => b.readonly(r).build().ok(), None => b.build().ok() }
        }));
        spec.set_process(process.and_then(|(args, uid, gid, gids, env, term)| {
            let mut user = UserBuilder::default().uid(uid).gid(gid);
            if let Some(g) = gids { user = user.additional_gids(g); }
            let mut b = ProcessBuilder::default().user(user.build().unwrap_or_default()).cwd("/")
                .env(vec![env]);
            if let Some(a) = args { b = b.args(a); }
            if let Some(t) = term { b = b.terminal(t); }
            b.build().ok()
        }));
        spec.set_linux(linux.and_then(|(devices, namespaces, resources)| {
            let mut b = LinuxBuilder::default();
            if let Some(d) = devices {
                let types = [LinuxDeviceType::A, LinuxDeviceType::B, LinuxDeviceType::C, LinuxDeviceType::U, LinuxDeviceType::P];
                b = b.devices(d.into_iter().filter_map(|(t, p, major)| {
                    LinuxDeviceBuilder::default().typ(types[usize::from(t) % 5]).path(p).major(major).build().ok()
                }).collect::<Vec<_>>());
            }
            if let Some(n) = namespaces {
                b = b.namespaces(n.into_iter().filter_map(|(net, p)| {
                    let typ = if net { LinuxNamespaceType::Network } else { LinuxNamespaceType::Pid };
                    let nb = LinuxNamespaceBuilder::default().typ(typ);
                    match p { Some(p) => nb.path(p).build().ok(), None => nb.build().ok() }
                }).collect::<Vec<_>>());
            }
            b.build().ok().map(|mut l| {
                if !resources { l.set_resources(None); }
                l
            })
        }));
        spec.set_mounts(mounts.map(|ms| ms.into_iter().filter_map(|(dest, typ, src)| {
            let mut b = MountBuilder::default().destination(dest);
            if let Some(t) = typ { b = b.typ(t); }
            if let Some(s) = src { b = b.source(s); }
            b.build().ok()
        }).collect()));
        spec.set_hostname(hostname);
        spec.set_annotations(annotations);
        spec
    }
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("true".to_owned()),
        Just("0".to_owned()),
        Just("4294967296".to_owned()),
        Just("/ok/x".to_owned()),
        Just("/ok/../x".to_owned()),
        Just("virtio-fs".to_owned()),
        Just("=".to_owned()),
        "[0-9]{1,11}",
        ".{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_spec_panics(spec in arb_spec()) {
        let rt = runtime();
        let _ = container_type(&spec);
        let _ = sandbox_id(&spec);
        let _ = container_config(&spec, Path::new("/b"), "c");
        let _ = sandbox_config(&spec, &rt, Path::new("/b"), "s");
    }

    #[test]
    fn no_annotation_map_panics(
        values in proptest::collection::vec(opt(arb_value()), annotations::keys().count()),
        enable in any::<bool>(),
        daemon in any::<bool>(),
    ) {
        let mut rt = runtime();
        if !daemon { rt.hypervisor_config.virtio_fs_daemon.clear(); }
        if enable {
            rt.annotation_policy.enable_annotations = annotations::keys().map(str::to_owned).collect();
            rt.annotation_policy.valid_kernel_paths = glob::Pattern::new("/ok/*").into_iter().collect();
        }
        let map: HashMap<String, String> = annotations::keys()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        let mut spec = Spec::default();
        spec.set_annotations(Some(map));
        if let Err(e) = sandbox_config(&spec, &rt, Path::new("/b"), "s") {
            let text = e.to_string();
            prop_assert!(!text.contains('\n'));
        }
    }
}
