//! Unit tests of the symbolizer's pure parts; the tests on real binaries
//! are in `gobinary/tests/symbolize.rs`.

use super::*;

fn frame(function: &str, wrapper: bool) -> Frame {
    Frame {
        function: function.into(),
        file: "f.go".into(),
        line: 1,
        start_line: 0,
        pc: 0,
        entry: 0,
        inlined: false,
        wrapper,
    }
}

#[test]
fn names_for_print() {
    assert_eq!(name_for_print("main.main"), "main.main");
    assert_eq!(name_for_print("main.F[go.shape.int]"), "main.F[...]");
    assert_eq!(
        name_for_print("main.(*T[go.shape.int]).M[go.shape.string]"),
        "main.(*T[...]).M[...]"
    );
    assert_eq!(name_for_print("main.F[go.shape.[]int]"), "main.F[...]");
    assert_eq!(name_for_print("a]b["), "a]b[");
    assert_eq!(name_for_print("x[a]]b[c]"), "x[a]]b[c]");
    assert_eq!(name_for_print("[]"), "[...]");
}

#[test]
fn wrappers_elided_unless_they_panicked() {
    let mut s = vec![
        frame("main.M", false),
        frame("main.(*T).M", true),
        frame("runtime.gopanic", false),
        frame("main.T.M-fm", true),
        frame("main.main", false),
    ];
    elide_wrappers(&mut s);
    let names: Vec<_> = s.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names,
        ["main.M", "runtime.gopanic", "main.T.M-fm", "main.main"]
    );
    // A wrapper at the top (nothing called from it) goes too.
    let mut s = vec![frame("w", true), frame("main.main", false)];
    elide_wrappers(&mut s);
    assert_eq!(s.len(), 1);
}

#[test]
fn wrapper_ids_by_release() {
    let v = |minor| GoVersion::new(1, minor, 0);
    assert_eq!(wrapper_func_id(v(19)), 21);
    assert_eq!(wrapper_func_id(v(21)), 21);
    assert_eq!(wrapper_func_id(v(22)), 22);
    assert_eq!(wrapper_func_id(v(24)), 22);
    assert_eq!(wrapper_func_id(v(25)), 23);
    assert_eq!(wrapper_func_id(v(27)), 23);
}
