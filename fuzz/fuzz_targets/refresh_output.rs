//! The parser of what the refresh script prints on a node (a master of the fixture cluster,
//! which reads the most: certificates, keys, kubeconfigs, etcd's front-proxy material). A
//! node's output is not trusted: any text gives an inventory or a parse error.
#![no_main]
use certrotate::pki::catalogue;
use certrotate::remote::script::{parse_output, NodeReadSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn spec() -> &'static (String, NodeReadSpec) {
    static SPEC: OnceLock<(String, NodeReadSpec)> = OnceLock::new();
    SPEC.get_or_init(|| {
        let topo = certrotate_fuzz::fixture_topology();
        let master = &topo.masters[0];
        (master.name.clone(), NodeReadSpec::for_node(master, &catalogue::catalogue(topo), &topo.admin_username))
    })
}

fuzz_target!(|data: &[u8]| {
    // The SSH layer hands over stdout as text, lossily decoded.
    let out = String::from_utf8_lossy(data);
    let (node, spec) = spec();
    if let Err(e) = parse_output(node, spec, &out) {
        let _ = e.to_string();
    }
});
