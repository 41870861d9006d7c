//! `aoc-node certs`: the cluster's certificate authority and the members'
//! and clients' certificates for mutual TLS, as PEM files.
//!
//! The CA key is reused when `DIR/ca.key` exists (to add a member later);
//! otherwise a new CA is made. Existing certificate and key files are never
//! overwritten. Private keys are written owner-only (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use aoc_core::transport::tls::CertificateAuthority;

/// Writes the CA (if new) and a certificate and key per member and client
/// into `out`; returns the files written.
pub fn generate(
    out: &Path,
    cluster_id: u64,
    members: &[u64],
    clients: &[String],
) -> Result<Vec<PathBuf>, String> {
    if cluster_id == 0 {
        return Err("--cluster-id: 0 is not allowed".into());
    }
    if let Some(bad) = clients
        .iter()
        .find(|c| c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'))
    {
        return Err(format!(
            "--clients: {bad:?} must be letters, digits and '-' (it becomes part of a DNS name)"
        ));
    }
    if members.contains(&0) {
        return Err("--members: member ids are non-zero".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut written = Vec::new();
    let ca_key = out.join("ca.key");
    let ca = if ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| format!("cannot read {}: {e}", ca_key.display()))?;
        CertificateAuthority::from_key_pem(cluster_id, &pem).map_err(|e| e.to_string())?
    } else {
        let ca = CertificateAuthority::generate(cluster_id).map_err(|e| e.to_string())?;
        write_new(&ca_key, &ca.key_pem(), true)?;
        written.push(ca_key.clone());
        ca
    };
    let ca_pem = out.join("ca.pem");
    if !ca_pem.exists() {
        write_new(&ca_pem, &ca.cert_pem(), false)?;
        written.push(ca_pem);
    }
    let mut issue = |stem: String, pair: (String, String)| -> Result<(), String> {
        let cert = out.join(format!("{stem}.pem"));
        let key = out.join(format!("{stem}.key"));
        write_new(&cert, &pair.0, false)?;
        write_new(&key, &pair.1, true)?;
        written.push(cert);
        written.push(key);
        Ok(())
    };
    for m in members {
        let pair = ca.issue_member(cluster_id, *m).map_err(|e| e.to_string())?;
        issue(format!("member-{m}"), pair)?;
    }
    for c in clients {
        let pair = ca.issue_client(cluster_id, c).map_err(|e| e.to_string())?;
        issue(format!("client-{c}"), pair)?;
    }
    Ok(written)
}

/// Creates `path` with `text`; refuses to replace an existing file.
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists: it is not overwritten (move it away to issue it again)",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoc_core::transport::tls::{member_name, TlsIdentity};

    #[test]
    fn certificates_load_and_name_their_member() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let files = generate(tmp.path(), 7, &[1, 2], &["admin".into()]).expect("generate");
        assert_eq!(files.len(), 2 + 4 + 2);
        let p = |n: &str| tmp.path().join(n);
        let id = TlsIdentity::from_files(&p("ca.pem"), &p("member-2.pem"), &p("member-2.key"))
            .expect("member 2 loads");
        id.check_own_name(&member_name(7, 2))
            .expect("names member 2");
        assert!(id.check_own_name(&member_name(7, 1)).is_err());
        TlsIdentity::from_files(&p("ca.pem"), &p("client-admin.pem"), &p("client-admin.key"))
            .expect("the client loads");
        // A later run adds a member with the same CA; nothing is replaced.
        let more = generate(tmp.path(), 7, &[3], &[]).expect("add member 3");
        assert_eq!(more.len(), 2);
        let err = generate(tmp.path(), 7, &[3], &[]).expect_err("no overwrite");
        assert!(err.contains("is not overwritten"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p("ca.key"))
                .expect("ca.key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = generate(tmp.path(), 7, &[], &["no spaces".into()]).expect_err("bad name");
        assert!(err.contains("--clients"), "{err}");
    }
}
