//! Files a plugin may read (`allow_files`), granted one by one: the host copies each into a
//! directory of the instance's own before every call, and the guest sees that directory at
//! the file's parent path. The guest reads `/proc/stat` as ever, but nothing beside it:
//! granting `/proc` itself would hand it `/proc/self/mem` and `/proc/self/environ`, the
//! agent's memory, keys and secrets.

use std::path::{Component, Path, PathBuf};

/// The most bytes a granted file may hold: these are small, live files (`/proc/stat`), not
/// data to read through.
pub const MAX_GRANTED_FILE: u64 = 1 << 20;

/// Why a directory or file may not be granted, if it may not.
pub fn refused_grant(path: &Path, dir: bool) -> Option<String> {
    if !path.is_absolute() {
        return Some("must be an absolute path".into());
    }
    // Where it leads, symbolic links followed; a path that does not exist yet is judged as
    // written (it cannot be opened either).
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let parts: Vec<Component> = real.components().collect();
    let proc = parts.get(1).is_some_and(|c| c.as_os_str() == "proc");
    if dir && (parts.len() <= 1 || proc) {
        return Some(format!(
            "{} would expose the agent's own process (/proc/self: its memory, environment and \
             keys); grant the files the plugin needs with allow_files instead",
            real.display()
        ));
    }
    if proc
        && parts.get(2).is_some_and(|c| {
            let s = c.as_os_str().to_string_lossy();
            s == "self" || s == "thread-self" || s.bytes().all(|b| b.is_ascii_digit())
        })
    {
        return Some(format!(
            "{} belongs to a process (the agent's own, or another's)",
            real.display()
        ));
    }
    None
}

/// One instance's granted files and the directory their copies live in.
pub struct FileGrants {
    root: PathBuf,
    /// Host file → its copy under `root` (`root` + the file's absolute path).
    files: Vec<(PathBuf, PathBuf)>,
}

impl FileGrants {
    /// Grants of `files`, copied under `root` (created owner-only, removed on drop).
    pub fn new(root: PathBuf, files: &[PathBuf]) -> std::io::Result<Self> {
        let files = files
            .iter()
            .map(|f| {
                let rel = f.strip_prefix("/").unwrap_or(f);
                (f.clone(), root.join(rel))
            })
            .collect::<Vec<_>>();
        if !files.is_empty() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            for (_, copy) in &files {
                if let Some(parent) = copy.parent() {
                    b.create(parent)?;
                }
            }
        }
        Ok(Self { root, files })
    }

    /// Copy every granted file again (a read of at most [`MAX_GRANTED_FILE`] bytes each).
    pub fn refresh(&self) -> std::io::Result<()> {
        use std::io::Read as _;
        for (host, copy) in &self.files {
            let mut data = Vec::new();
            std::fs::File::open(host)?
                .take(MAX_GRANTED_FILE + 1)
                .read_to_end(&mut data)?;
            if data.len() as u64 > MAX_GRANTED_FILE {
                return Err(std::io::Error::other(format!(
                    "{} holds more than {MAX_GRANTED_FILE} bytes",
                    host.display()
                )));
            }
            std::fs::write(copy, &data)?;
        }
        Ok(())
    }

    /// `(host directory, guest path)` to preopen: each granted file's parent, as a copy.
    pub fn preopens(&self) -> Vec<(PathBuf, String)> {
        let mut dirs: Vec<(PathBuf, String)> = self
            .files
            .iter()
            .filter_map(|(host, copy)| {
                Some((
                    copy.parent()?.to_path_buf(),
                    host.parent()?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

impl Drop for FileGrants {
    fn drop(&mut self) {
        if !self.files.is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_process_cannot_be_granted() {
        for (path, dir) in [
            ("/proc", true),
            ("/", true),
            ("/proc/self", true),
            ("/proc/self/environ", false),
            ("/proc/thread-self/mem", false),
            ("/proc/1/environ", false),
        ] {
            assert!(refused_grant(Path::new(path), dir).is_some(), "{path}");
        }
        let pid = format!("/proc/{}/mem", std::process::id());
        assert!(refused_grant(Path::new(&pid), false).is_some());
        for (path, dir) in [
            ("/proc/stat", false),
            ("/proc/sys/kernel/hostname", false),
            ("/var/log", true),
        ] {
            assert_eq!(refused_grant(Path::new(path), dir), None, "{path}");
        }
        assert!(refused_grant(Path::new("relative/dir"), true).is_some());
        // A link to /proc is judged by where it leads.
        let d = tempfile::tempdir().expect("tempdir");
        let link = d.path().join("p");
        std::os::unix::fs::symlink("/proc", &link).expect("symlink");
        assert!(refused_grant(&link, true).is_some());
    }

    #[test]
    fn granted_files_are_fresh_copies_under_their_parent_path() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("src");
        std::fs::create_dir(&src).expect("src");
        let f = src.join("value");
        std::fs::write(&f, "1").expect("write");
        let grants =
            FileGrants::new(d.path().join("grants"), std::slice::from_ref(&f)).expect("grants");
        grants.refresh().expect("refresh");
        let (host_dir, guest) = grants.preopens().pop().expect("one preopen");
        assert_eq!(guest, src.to_string_lossy());
        assert_eq!(
            std::fs::read_to_string(host_dir.join("value")).expect("copy"),
            "1"
        );
        std::fs::write(&f, "2").expect("write");
        grants.refresh().expect("refresh");
        assert_eq!(
            std::fs::read_to_string(host_dir.join("value")).expect("copy"),
            "2"
        );
        drop(grants);
        assert!(
            !d.path().join("grants").exists(),
            "removed with the instance"
        );
    }
}
