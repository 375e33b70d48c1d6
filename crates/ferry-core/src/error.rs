//! Errors told to operators: one line holding every cause.

/// An error with all its causes, `outer: inner: innermost`, leaving out a cause whose text
/// the line already holds (wrappers often repeat their source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn every_cause_once() {
        let e = E("cannot open t.db", Some(Box::new(E("disk I/O", Some(Box::new(E("EIO", None)))))));
        assert_eq!(chain(&e), "cannot open t.db: disk I/O: EIO");
        let repeating = E("cannot open t.db: disk I/O", Some(Box::new(E("disk I/O", None))));
        assert_eq!(chain(&repeating), "cannot open t.db: disk I/O");
    }
}
