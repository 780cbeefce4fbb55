//! The live inventory: what refresh read on every node, as plain data. Certificates are
//! kept as parsed facts plus their PEM (public material); private keys never leave the node:
//! only the fingerprint of the public key they carry is recorded, so a key can be matched to
//! its certificate without being read.

use crate::pki::inspect::CertFacts;
use serde::{Deserialize, Serialize};

/// Everything refresh observed, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub taken_at: time::OffsetDateTime,
    pub nodes: Vec<NodeInventory>,
    /// Nodes that could not be read, with the SSH error.
    pub unreachable: Vec<UnreachableNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnreachableNode {
    pub node: String,
    pub error: String,
}

/// One node's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInventory {
    pub node: String,
    /// `hostname` as the node reports it (cross-checks the name suffix).
    pub hostname: String,
    /// Every catalogue file for this node, present or not.
    pub files: Vec<ObservedFile>,
    /// Kubeconfigs found (kubelet's, the admin's on masters).
    pub kubeconfigs: Vec<ObservedKubeconfig>,
    /// Files under /etc/kubernetes/certs the catalogue does not know.
    pub unexpected_files: Vec<String>,
    /// Front-proxy material held in etcd, read on masters.
    pub etcd_proxy: Option<EtcdProxyState>,
    /// Whether kubelet-client-current.pem exists (must go when the CA changes).
    pub kubelet_client_current: bool,
    /// Catalogue files that are symbolic links, with where they point: read through, but
    /// an install replaces the link with a file.
    #[serde(default)]
    pub symlinks: Vec<Symlink>,
}

/// A catalogue file that is a symbolic link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

/// A file as seen on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedFile {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// SHA-256 of the file's bytes; for private keys this digest is of the key file and says
    /// nothing about the key, it only lets apply notice the file changed.
    pub sha256: String,
    pub content: ObservedContent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ObservedContent {
    Certificate {
        facts: Box<CertFacts>,
        pem: String,
    },
    PrivateKey {
        algorithm: String,
        bits: u32,
        /// SHA-256 of the SubjectPublicKeyInfo DER derived from the key on the node; equal
        /// to `CertFacts::public_key_sha256` of the matching certificate.
        public_key_sha256: String,
    },
    Missing,
    /// Present but not readable as what the catalogue expects.
    Unparseable {
        error: String,
    },
}

/// A kubeconfig and what its user entry refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedKubeconfig {
    pub path: String,
    pub owner: String,
    pub mode: u32,
    pub server: Option<String>,
    /// A file path, or `embedded:<sha256 of the certificate DER>` when the data is inline.
    pub certificate_authority: Option<String>,
    pub client_certificate: Option<String>,
    /// A file path, or `embedded:<public key sha256>` (the key itself is never read).
    pub client_key: Option<String>,
}

/// Front-proxy material under /proxycerts in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdProxyState {
    /// SHA-256 of the certificate DER of requestheader-client-ca-file, if present.
    pub ca_sha256: Option<String>,
    pub client_cert_sha256: Option<String>,
    /// Public-key fingerprint of proxy-client-key-file.
    pub client_key_public_sha256: Option<String>,
    /// Keys whose value is not in AKS Engine's form (one leading space, see
    /// `pki::proxycerts`): a master AKS Engine provisions could not read them. The digests
    /// above are of the values as AKS Engine reads them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrong_form: Vec<String>,
}

impl NodeInventory {
    pub fn file(&self, path: &str) -> Option<&ObservedFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

impl Inventory {
    pub fn node(&self, name: &str) -> Option<&NodeInventory> {
        self.nodes.iter().find(|n| n.node == name)
    }

    /// Puts nodes and unreachable nodes in the topology's order, so that plans and tables read
    /// the same every time whatever order the reads finished in.
    pub fn sort_in_order_of(&mut self, topo: &crate::model::topology::Topology) {
        let order: Vec<&str> = topo.nodes().map(|n| n.name.as_str()).collect();
        let position = |name: &str| order.iter().position(|o| *o == name);
        self.nodes.sort_by_key(|n| position(&n.node));
        self.unreachable.sort_by_key(|u| position(&u.node));
    }
}
