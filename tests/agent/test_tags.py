"""tree-sitter tags: definitions, references and outlines for each supported language."""

from __future__ import annotations

import pytest

from dsv4.agent.tags import extract, language_for, outline

_SOURCES = {
    "pkg/mod.py": (
        "import os\n"
        "class Base(Thing):\n"
        "    def method(self, x: int) -> int:\n"
        "        return helper(x)\n"
        "\n"
        "@cached\n"
        "def helper(y):\n"
        "    return os.path.join(y)\n"
    ),
    "web/app.js": (
        "function foo(a) { return bar(a); }\n"
        "class Widget { render(x) { this.paint(); } }\n"
        "const make = (q) => new Widget();\n"
    ),
    "web/types.ts": (
        "interface Shape { area(): number }\n"
        "type Id = string;\n"
        "enum Color { Red }\n"
        "class Square implements Shape { area(): number { return side(); } }\n"
        "export function build(s: Shape): Id { return 'x' }\n"
    ),
    "web/App.tsx": "function App(): JSX.Element { return <div/>; }\n",
    "svc/main.go": (
        "package svc\n"
        "type Server struct{ port int }\n"
        "func (s *Server) Start() int { return listen() }\n"
        "func listen() int { return 0 }\n"
    ),
    "src/lib.rs": (
        "struct Engine;\n"
        "trait Run { fn run(&self); }\n"
        "impl Run for Engine { fn run(&self) { step(); } }\n"
        'fn step() { println!("x"); }\n'
        "mod inner {}\n"
    ),
    "src/Main.java": (
        "class Main { Main() {} int go(Helper h) { return h.assist(); } }\n"
        "interface Helper { int assist(); }\n"
    ),
    "c/util.c": (
        "struct point { int x; };\n"
        "typedef int length_t;\n"
        "static int *make(int n) { return alloc_points(n); }\n"
        "int prototype(void);\n"
        "#define MAX(a, b) ((a) > (b))\n"
    ),
    "cpp/shape.cpp": (
        "namespace geo { class Circle { public: double radius(); }; }\n"
        "double area(geo::Circle c) { return c.radius() * pi(); }\n"
    ),
}

_EXPECTED = {
    "pkg/mod.py": ({"Base", "method", "helper"}, {"Thing", "helper", "join", "cached"}),
    "web/app.js": ({"foo", "Widget", "render", "make"}, {"bar", "paint", "Widget"}),
    "web/types.ts": ({"Shape", "area", "Id", "Color", "Square", "build"}, {"Shape", "side", "Id"}),
    "web/App.tsx": ({"App"}, set()),
    "svc/main.go": ({"Server", "Start", "listen"}, {"listen", "Server"}),
    "src/lib.rs": ({"Engine", "Run", "run", "step", "inner"}, {"step", "println", "Engine"}),
    "src/Main.java": ({"Main", "go", "Helper", "assist"}, {"assist", "Helper"}),
    "c/util.c": ({"point", "length_t", "make", "prototype", "MAX"}, {"alloc_points"}),
    "cpp/shape.cpp": ({"geo", "Circle", "radius", "area"}, {"radius", "pi", "Circle"}),
}


@pytest.mark.parametrize("path", sorted(_SOURCES))
def test_definitions_and_references(path: str) -> None:
    tags = extract(path, _SOURCES[path])
    assert tags.language is not None
    defs, refs = _EXPECTED[path]
    assert {d.name for d in tags.definitions} == defs
    assert refs <= {name for name, _ in tags.references}


def test_nesting_lines_and_signatures() -> None:
    tags = extract("pkg/mod.py", _SOURCES["pkg/mod.py"])
    by_name = {d.name: d for d in tags.definitions}
    assert (by_name["Base"].line, by_name["Base"].depth) == (2, 0)
    assert (by_name["method"].line, by_name["method"].depth) == (3, 1)
    assert by_name["method"].signature == "def method(self, x: int) -> int:"
    assert by_name["helper"].depth == 0


def test_outline_has_one_line_per_definition_without_bodies() -> None:
    text = outline(extract("svc/main.go", _SOURCES["svc/main.go"]))
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[1].split("|", 1)[0].strip() == "3"
    assert "func (s *Server) Start() int" in lines[1]
    assert "listen()" not in lines[1].split("int", 1)[1]  # the body is not shown
    assert text.endswith("\n")


def test_reference_counts() -> None:
    tags = extract("a.py", "def f():\n    g()\n    g()\n    h()\n")
    assert dict(tags.references) == {"g": 2, "h": 1}


def test_plain_text_fallback() -> None:
    assert language_for("notes.txt") is None
    tags = extract("notes.txt", "def looks_like_code(): pass\n")
    assert tags.language is None and tags.definitions == () and tags.references == ()
    assert outline(tags) == ""


def test_markdown_headings_outline_skips_code_fences() -> None:
    md = "# Title\ntext\n## Usage\n```sh\n# a shell comment\n```\n### Details\n"
    tags = extract("README.md", md)
    assert [(d.name, d.line, d.depth) for d in tags.definitions] == [
        ("Title", 1, 0),
        ("Usage", 3, 1),
        ("Details", 7, 2),
    ]


def test_syntax_errors_do_not_raise() -> None:
    tags = extract("broken.py", "def ok():\n    pass\ndef broken(:\n")
    assert "ok" in {d.name for d in tags.definitions}
