"""Every Scheme operator of RELION-4 (hpcem.workflow.operators) on hand-computed values, the type
checks that refuse a badly typed operator, and the file operators' confinement to the project
folder (hostile paths: ``..``, absolute paths, a symbolic link out of the project)."""
import os
import time

import pytest

from hpcem.errors import InputError
from hpcem.io.star_text import Block, write_star_text
from hpcem.workflow.operators import SIGNATURES, check_operator, run_operator
from hpcem.workflow.scheme import Job, Operator, Scheme, Variable
from hpcem.workflow.schemer import Context


def _scheme(tmp_path, allowed=(), **kinds):
    folder = tmp_path / "Schemes" / "t"
    folder.mkdir(parents=True, exist_ok=True)
    s = Scheme(str(folder))
    for kind, values in kinds.items():
        for name, v in values.items():
            s.variables[name] = Variable(name, kind, v, v)
    return s, Context(s, allowed=allowed, echo=False)


def _op(s, ctx, type_, out="undefined", in1="undefined", in2="undefined"):
    o = Operator("OP", type_, out, in1, in2)
    check_operator(s, o)
    return run_operator(ctx, o)


def _classes_star(path):
    write_star_text(path, [
        Block("model_general", ["rlnCurrentIteration", "rlnDoSolventFlattening", "rlnReferenceDimensionality"],
              [["25", "1", "2"]], loop=False),
        Block("model_classes", ["rlnReferenceImage", "rlnClassDistribution"],
              [["1@cls.mrcs", "0.2"], ["2@cls.mrcs", "0.5"], ["3@cls.mrcs", "0.3"]])])


def test_bool_operators(tmp_path):
    s, ctx = _scheme(tmp_path, float={"a": 2.0, "b": 3.0, "row1": 1.0}, bool={"t": True, "f": False, "out": False},
                     string={"there": "x.txt", "missing": "y.txt", "flat": "cls.star,model_general,rlnDoSolventFlattening",
                             "done": "flags.star,flags,rlnDone"})
    (tmp_path / "x.txt").write_text("x")
    _classes_star(str(tmp_path / "cls.star"))
    write_star_text(str(tmp_path / "flags.star"), [Block("flags", ["rlnDone"], [["1"], ["0"]])])
    cases = [("bool=set", "t", "undefined", True), ("bool=and", "t", "f", False), ("bool=or", "t", "f", True),
             ("bool=not", "t", "undefined", False), ("bool=gt", "a", "b", False), ("bool=lt", "a", "b", True),
             ("bool=ge", "a", "2", True), ("bool=le", "b", "2.5", False), ("bool=eq", "a", "2", True),
             ("bool=eq", "a", "b", False), ("bool=file_exists", "there", "undefined", True),
             ("bool=file_exists", "missing", "undefined", False), ("bool=read_star", "flat", "undefined", True),
             ("bool=read_star", "done", "undefined", True), ("bool=read_star", "done", "row1", False)]
    for type_, in1, in2, want in cases:
        assert _op(s, ctx, type_, "out", in1, in2) is True
        assert s.value("out") is want, (type_, in1, in2)
    s.variables["flat"].value = "cls.star,model_general,rlnCurrentIteration"     # 25 is no boolean
    with pytest.raises(InputError, match="not a boolean"):
        _op(s, ctx, "bool=read_star", "out", "flat")


def test_float_operators(tmp_path):
    s, ctx = _scheme(tmp_path, float={"a": 7.0, "b": 2.0, "out": 0.0, "idx": 1.0},
                     string={"words": "a,b,c", "none": "undefined", "parts": "p.star", "nofile": "q.star",
                             "table": "model_classes", "spec": "cls.star,model_classes,rlnClassDistribution",
                             "gen": "cls.star,model_general,rlnCurrentIteration"})
    _classes_star(str(tmp_path / "cls.star"))
    write_star_text(str(tmp_path / "p.star"), [
        Block("optics", ["rlnOpticsGroup"], [["1"]]),
        Block("particles", ["rlnImageName", "rlnOpticsGroup"], [["%d@s.mrcs" % i, "1"] for i in range(1, 8)])])
    cases = [("float=set", "a", "undefined", 7.0), ("float=set", "3.5", "undefined", 3.5),
             ("float=plus", "a", "b", 9.0), ("float=plus", "a", "1", 8.0), ("float=minus", "a", "b", 5.0),
             ("float=mult", "a", "b", 14.0), ("float=divide", "a", "b", 3.5), ("float=round", "a", "undefined", 7.0),
             ("float=count_words", "words", "undefined", 3.0), ("float=count_words", "none", "undefined", 0.0),
             ("float=count_images", "parts", "undefined", 7.0), ("float=count_images", "parts", "particles", 7.0),
             ("float=count_images", "nofile", "undefined", 0.0), ("float=count_images", "parts", "optics", 1.0),
             ("float=read_star", "gen", "undefined", 25.0), ("float=read_star", "spec", "idx", 0.5),
             ("float=star_table_max", "spec", "undefined", 0.5), ("float=star_table_min", "spec", "undefined", 0.2),
             ("float=star_table_max_idx", "spec", "undefined", 1.0),
             ("float=star_table_min_idx", "spec", "undefined", 0.0),
             ("float=star_table_sort_idx", "spec", "1", 1.0), ("float=star_table_sort_idx", "spec", "2", 2.0),
             ("float=star_table_sort_idx", "spec", "-1", 0.0)]
    for type_, in1, in2, want in cases:
        _op(s, ctx, type_, "out", in1, in2)
        assert s.value("out") == pytest.approx(want), (type_, in1, in2)
    _op(s, ctx, "float=star_table_avg", "out", "spec")
    assert s.value("out") == pytest.approx(1.0 / 3.0)
    s.variables["a"].value = 2.5
    _op(s, ctx, "float=round", "out", "a")
    assert s.value("out") == 3.0


def test_string_operators(tmp_path):
    s, ctx = _scheme(tmp_path, float={"two": 2.0},
                     string={"path": "Class2D/job004/run_it025_data.star", "slash": "/", "under": "_it", "out": "",
                             "pre": "x_", "spec": "cls.star,model_classes,rlnReferenceImage",
                             "pattern": "Maps/*.mrc", "nomatch": "Maps/*.map", "list": "a,b,c",
                             "job": "Schemes/t/class2d/run_data.star"})
    s.jobs["class2d"] = Job("class2d", "Class2D/job009/", "new", True)
    _classes_star(str(tmp_path / "cls.star"))
    (tmp_path / "Maps").mkdir()
    for n in ("b.mrc", "a.mrc"):
        (tmp_path / "Maps" / n).write_text("m")
    cases = [("string=set", "path", "undefined", "Class2D/job004/run_it025_data.star"),
             ("string=set", "job", "undefined", "Class2D/job009/run_data.star"),
             ("string=join", "pre", "under", "x__it"), ("string=before_first", "path", "slash", "Class2D"),
             ("string=after_first", "path", "slash", "job004/run_it025_data.star"),
             ("string=before_last", "path", "slash", "Class2D/job004"),
             ("string=after_last", "path", "slash", "run_it025_data.star"),
             ("string=after_last", "path", "under", "025_data.star"),
             ("string=read_star", "spec", "two", "3@cls.mrcs"), ("string=glob", "pattern", "undefined",
                                                                 "Maps/a.mrc,Maps/b.mrc"),
             ("string=glob", "nomatch", "undefined", "undefined"), ("string=nth_word", "list", "2", "b"),
             ("string=nth_word", "list", "-1", "c"), ("string=nth_word", "list", "two", "b"),
             ("string=nth_word", "list", "4", "undefined")]
    for type_, in1, in2, want in cases:
        _op(s, ctx, type_, "out", in1, in2)
        assert s.value("out") == want, (type_, in1, in2)


def test_file_control_operators(tmp_path):
    s, ctx = _scheme(tmp_path, float={"hours": 0.0, "secs": 0.3, "elapsed": 0.0}, bool={"b": True},
                     string={"a": "A/a.txt", "b2": "B/sub/a.txt", "pat": "B/sub/*.txt"})
    assert _op(s, ctx, "touch_file", in1="a") and (tmp_path / "A" / "a.txt").exists()
    _op(s, ctx, "copy_file", in1="a", in2="b2")
    assert (tmp_path / "B" / "sub" / "a.txt").exists() and (tmp_path / "A" / "a.txt").exists()
    (tmp_path / "A" / "a.txt").write_text("moved")
    _op(s, ctx, "move_file", in1="a", in2="b2")
    assert not (tmp_path / "A" / "a.txt").exists() and (tmp_path / "B" / "sub" / "a.txt").read_text() == "moved"
    _op(s, ctx, "delete_file", in1="pat")
    assert not (tmp_path / "B" / "sub" / "a.txt").exists()
    assert _op(s, ctx, "email", in1="b", in2="a") is True
    assert "e-mail (logged only): b = True; a = A/a.txt" in (tmp_path / "Schemes" / "t" / "schemer.log").read_text()
    assert _op(s, ctx, "wait", "elapsed", "secs") is True          # the first wait only notes the time
    t0 = time.time()
    _op(s, ctx, "wait", "elapsed", "secs")
    assert time.time() - t0 > 0.2 and 0.0 <= s.value("elapsed") < 0.3
    assert _op(s, ctx, "exit_maxtime", in1="hours") is True        # sets the exit time (now + 0 h)
    assert _op(s, ctx, "exit_maxtime", in1="hours") is False       # and it has passed
    assert _op(s, ctx, "exit") is False


def test_operator_type_checks(tmp_path):
    s, ctx = _scheme(tmp_path, float={"x": 1.0}, bool={"b": False}, string={"t": "a"})
    bad = [("bool=gt", "x", "x", "b2"), ("float=plus", "x", "x", "t"), ("float=plus", "x", "b", "x"),
           ("string=join", "t", "t", "x"), ("bool=and", "b", "b", "x"), ("touch_file", "undefined", "x", "undefined"),
           ("no_such_op", "x", "x", "x")]
    for type_, out, in1, in2 in bad:
        with pytest.raises(InputError, match="OP"):
            check_operator(s, Operator("OP", type_, out, in1, in2))
    assert len(SIGNATURES) == 43       # every operator RELION-4 lists (11 bool, 15 float, 9 string, 8 others)


@pytest.mark.parametrize("hostile", ["../outside.txt", "/tmp/../etc/hpcem_never.txt", "link/inside.txt"])
def test_file_operators_stay_in_the_project(tmp_path, hostile):
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inside.txt").write_text("keep")
    os.symlink(str(outside), str(project / "link"))
    s, ctx = _scheme(project, string={"evil": hostile, "mine": "mine.txt", "secret": str(outside / "inside.txt")})
    (project / "mine.txt").write_text("x")
    for type_, in1, in2 in (("touch_file", "evil", "undefined"), ("delete_file", "evil", "undefined"),
                            ("copy_file", "mine", "evil"), ("move_file", "mine", "evil"),
                            ("copy_file", "secret", "mine")):
        with pytest.raises(InputError, match="outside the project folder"):
            _op(s, ctx, type_, in1=in1, in2=in2)
    s.variables["b"] = Variable("b", "bool", False, False)
    with pytest.raises(InputError, match="outside the project folder"):
        _op(s, ctx, "bool=file_exists", "b", "secret")
    assert (outside / "inside.txt").read_text() == "keep" and (project / "mine.txt").exists()
    assert not (tmp_path / "outside.txt").exists()
    # a path the user gave on the command line is allowed
    s2, ctx2 = _scheme(project, allowed=[str(outside)], string={"secret": str(outside / "inside.txt"),
                                                                  "copy": "copy.txt"})
    _op(s2, ctx2, "copy_file", in1="secret", in2="copy")
    assert (project / "copy.txt").read_text() == "keep"
