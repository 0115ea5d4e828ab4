#!/usr/bin/env python3
"""Hostile-input probe of the built CLI (docs/reliability.md): malformed safetensors through inspect and convert,
malformed config.json through inspect, convert and generate, and (as root, where tmpfs can be mounted) a full disk
during convert and distill. Each case is classified from the outside:

  clean error       exit 1 or 2 and exactly one stderr line "error: ..." of at most 310 characters
  crash             any other failure: a stack trace, several lines, a signal, an unexpected exit code
  hang              no exit within the time limit
  wrongly accepted  exit 0 although this script's own checks (written from the formats' specifications, not from
                    the C# code) say the input is invalid
  leftovers         hidden .NAME.tmp-* / .NAME.old-* entries, or a partial output, left after the command

Usage: tools/hostile-probe.py [--cases N] [--seed S] [--disk-full] (build first: tools/test.sh or dotnet build).
Prints a markdown table on standard output.
"""
import argparse, json, os, random, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.environ.get("COMBADISTILL_CLI_DLL", os.path.join(ROOT, "tests/CombaDistill.Tests/bin/Release/net10.0/CombaDistill.Cli.dll"))
SHARED = os.environ.get("COMBADISTILL_SHARED", os.path.join(ROOT, "..", "shared"))
MODEL = os.path.join(SHARED, "models", "stories260K")
TIMEOUT = 60

HOSTILE = ["0", "-1", "1.5", "1e308", "2147483647", "2147483648", "9223372036854775807", "18446744073709551615",
           '"x"', '""', '"\\ud800"', "[]", "[null]", "[1.5]", '["x"]', "{}", "null", "true", "[-1]", "[0]",
           "[0, 4611686018427387904, 4611686018427387904]", "[9223372036854775807, 2]",
           "[" + ",".join(["1"] * 100000) + "]", '"' + "n" * 1000000 + '"', "[1000000000000]"]


def run(args, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    try:
        p = subprocess.run(["dotnet", CLI] + args, capture_output=True, timeout=TIMEOUT, env=e)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return None, "", ""


def classify(code, stderr):
    if code is None:
        return "hang"
    if code == 0:
        return "accepted"
    lines = [l for l in stderr.split("\n") if l.strip()]
    if code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) <= 310:
        return "clean"
    return "crash"


def leftovers(folder, name):
    return [e for e in os.listdir(folder) if e.startswith("." + name + ".")]


# ---- safetensors: an independent strict reader of the header --------------------------------------------------

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_valid(data):
    if len(data) < 8:
        return False
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        return False
    try:
        text = data[8:8 + n].decode("utf-8")
        header = json.loads(text, object_pairs_hook=lambda pairs: dict(pairs) if len({k for k, _ in pairs}) == len(pairs) else None)
        json.dumps(header, ensure_ascii=False).encode("utf-8")     # lone surrogates fail here
    except Exception:
        return False
    if not isinstance(header, dict):
        return False
    region = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return False
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in SIZES:
            return False
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**63 for d in shape) or len(shape) > 64:
            return False
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and 0 <= o for o in offsets):
            return False
        count, strides = 1, 1
        for d in shape:
            count *= d
            strides *= max(d, 1)
        if strides * SIZES[entry["dtype"]] >= 2**63 or offsets[1] < offsets[0] or offsets[1] > region:
            return False
        if offsets[1] - offsets[0] != count * SIZES[entry["dtype"]]:
            return False
        spans.append(tuple(offsets))
    spans.sort()
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def mutate_safetensors(original, rng):
    n = struct.unpack("<Q", original[:8])[0]
    header = json.loads(original[8:8 + n])
    data = original[8 + n:]
    kind = rng.randrange(4)
    if kind == 0:      # a field of one tensor replaced by a hostile value
        name = rng.choice([k for k in header if k != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        text = json.dumps(header)
        old = json.dumps({field: header[name][field]})[1:-1]
        entry = json.dumps(header[name])
        text = text.replace(entry, entry.replace(old, json.dumps(field) + ": " + rng.choice(HOSTILE)), 1)
        body = text.encode("utf-8")
    elif kind == 1:    # bytes that are no UTF-8 inside a name
        body = json.dumps(header).encode("utf-8").replace(b'"model.norm.weight"', b'"model.norm.\xff\xfeweight"', 1)
    elif kind == 2:    # random byte flips anywhere in the header
        body = bytearray(json.dumps(header).encode("utf-8"))
        for _ in range(rng.randrange(1, 6)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        body = bytes(body)
    else:              # a wrong length prefix or a cut file
        body = json.dumps(header).encode("utf-8")
        blob = struct.pack("<Q", len(body) + rng.choice([-9, -1, 1, 7, 2**40, 2**63])) + body + data
        return blob[: rng.randrange(len(blob))] if rng.random() < 0.5 else blob
    return struct.pack("<Q", len(body)) + body + data


# ---- config.json: an independent check of the fields the architecture needs -------------------------------------

def config_valid(text):
    try:
        c = json.loads(text, object_pairs_hook=lambda pairs: dict(pairs) if len({k for k, _ in pairs}) == len(pairs) else None)
        json.dumps(c, ensure_ascii=False).encode("utf-8")
    except Exception:
        return False
    if not isinstance(c, dict) or c.get("model_type") not in ("llama", "mistral", "qwen2"):
        return False

    def integer(v):
        return (type(v) is int) or (type(v) is float and v.is_integer() and abs(v) < 2**31)

    for field, cap in [("vocab_size", 1 << 24), ("hidden_size", 1 << 17), ("intermediate_size", 1 << 20), ("num_hidden_layers", 1024),
                       ("num_attention_heads", 1024)]:
        if not integer(c.get(field)) or not 1 <= c[field] <= cap:
            return False
    v = int(c["vocab_size"])
    heads = int(c["num_attention_heads"])
    kv = c.get("num_key_value_heads", heads)
    if not integer(kv) or kv < 1 or heads % int(kv):
        return False
    hd = c.get("head_dim", c["hidden_size"] // heads if c["hidden_size"] % heads == 0 else None)
    if not integer(hd) or hd < 1 or hd % 2 or hd > 4096:
        return False
    for field, default in [("rms_norm_eps", 1e-6), ("rope_theta", 1e4)]:
        x = c.get(field, default)
        if x is None:
            x = default
        if type(x) not in (int, float) or isinstance(x, bool) or not (0 < x < float("inf")) or (field == "rms_norm_eps" and x >= 1):
            return False
    mpe = c.get("max_position_embeddings", 2048)
    if mpe is not None and (not integer(mpe) or not 1 <= mpe <= 1 << 24):
        return False
    bos = c.get("bos_token_id", 1)
    if bos is not None and (not integer(bos) or not 0 <= bos < v):
        return False
    eos = c.get("eos_token_id", 2)
    eos = [2] if eos is None else eos if isinstance(eos, list) else [eos]
    if not eos or not all(integer(e) and 0 <= e < v for e in eos):
        return False
    if c.get("hidden_act", "silu") not in ("silu", None):
        return False
    for field in ("tie_word_embeddings", "attention_bias"):
        if c.get(field) is not None and type(c[field]) is not bool:
            return False
    if c.get("torch_dtype") not in (None, "float32", "float", "bfloat16", "float16", "half", "float64", "double"):
        return False
    rs = c.get("rope_scaling")
    if rs is not None:
        if not isinstance(rs, dict):
            return False
        kind = rs.get("rope_type", rs.get("type"))
        if kind not in ("default", "llama3", "linear"):
            return False
        if kind != "default":
            f = rs.get("factor")
            if type(f) not in (int, float) or not 0 < f < float("inf"):
                return False
    lt = c.get("layer_types")
    if lt is not None and (not isinstance(lt, list) or any(t != "full_attention" for t in lt)):
        return False
    return True


def mutate_config(base, rng):
    c = dict(base)
    text = None
    for _ in range(rng.randrange(1, 3)):
        field = rng.choice(list(c.keys()) + ["layer_types", "rope_scaling", "head_dim", "eos_token_id"])
        if rng.random() < 0.15:
            c.pop(field, None)
        else:
            c[field] = ("RAW", rng.choice(HOSTILE + ["512", "-0.5", "1e-300", '"bfloat16"', "3000", "1000000",
                                                    '{"rope_type": "llama3", "factor": 0}', '["sliding_attention"]', '[1, "x"]']))
    parts = []
    for k, v in c.items():
        parts.append(json.dumps(k) + ": " + (v[1] if isinstance(v, tuple) else json.dumps(v)))
    text = "{" + ", ".join(parts) + "}"
    if rng.random() < 0.1:
        text = text.encode("utf-8")[: rng.randrange(len(text))].decode("utf-8", "ignore")
    return text


RECIPE = """seed: 5
teacher: {{ path: {teacher} }}
student:
  convert: {{ chunk_size: 16 }}
data:
  train: {{ path: {train}, max_tokens: 3000 }}
  validation: {{ path: {valid}, max_tokens: 300 }}
  eval_tokens: 64
stages:
  - name: align
    objective: attention_alignment
    steps: 6
    sequence_length: 32
    micro_batch: 2
    checkpoint_every: 2
  - name: kd
    objective: distillation
    steps: 6
    sequence_length: 32
    micro_batch: 2
    checkpoint_every: 2
"""


def table_row(name, results):
    n = len(results)
    count = lambda k: sum(1 for r in results if r == k)
    return f"| {name} | {n} | {count('clean')} | {count('crash')} | {count('hang')} | {count('wrong')} | {count('leftover')} | {count('ok')} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--disk-full", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="hostile-probe-")
    teacher = os.path.join(work, "teacher")
    code, _, err = run(["import", "--from", os.path.join(MODEL, "stories260K.bin"), "--tokenizer", os.path.join(MODEL, "tok512.bin"), "--out", teacher])
    assert code == 0, err
    original_weights = open(os.path.join(teacher, "model.safetensors"), "rb").read()
    original_config = json.load(open(os.path.join(teacher, "config.json")))
    rows = []

    def case(command, valid, output_parent=None, output_name=None):
        code, _, err = run(command)
        kind = classify(code, err)
        if output_parent is not None:
            left = leftovers(output_parent, output_name)
            partial = kind != "accepted" and os.path.exists(os.path.join(output_parent, output_name))
            shutil.rmtree(os.path.join(output_parent, output_name), ignore_errors=True)
            for e in left:
                shutil.rmtree(os.path.join(output_parent, e), ignore_errors=True)
            if left or partial:
                return "leftover"
        if kind == "accepted":
            return "ok" if valid else "wrong"
        if kind == "crash":
            sys.stderr.write(f"CRASH {command[0]} exit {code}: {err[:600]}\n")
        if kind == "hang":
            sys.stderr.write(f"HANG {command[0]}\n")
        return kind

    results = {k: [] for k in ["st-inspect", "st-convert", "cfg-inspect", "cfg-convert", "cfg-generate"]}
    weights = os.path.join(teacher, "model.safetensors")
    for _ in range(args.cases):
        blob = mutate_safetensors(original_weights, rng)
        open(weights, "wb").write(blob)
        valid = safetensors_valid(blob)
        results["st-inspect"].append(case(["inspect", teacher], valid))
        results["st-convert"].append(case(["convert", "--from", teacher, "--out", os.path.join(work, "student")], valid, work, "student"))
    open(weights, "wb").write(original_weights)
    config_path = os.path.join(teacher, "config.json")
    for _ in range(args.cases):
        text = mutate_config(original_config, rng)
        open(config_path, "w", encoding="utf-8", errors="surrogatepass").write(text)
        valid = config_valid(text)
        results["cfg-inspect"].append(case(["inspect", teacher], valid))
        results["cfg-convert"].append(case(["convert", "--from", teacher, "--out", os.path.join(work, "student")], valid, work, "student"))
        results["cfg-generate"].append(case(["generate", "--model", teacher, "--max-tokens", "4", "--temperature", "0"], valid))
    json.dump(original_config, open(config_path, "w"))

    print("| probe | cases | clean one-line error | crash | hang | accepted though wrong | leftovers | accepted (valid) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, name in [("st-inspect", "malformed safetensors through `inspect`"), ("st-convert", "malformed safetensors through `convert`"),
                      ("cfg-inspect", "malformed config.json through `inspect`"), ("cfg-convert", "malformed config.json through `convert`"),
                      ("cfg-generate", "malformed config.json through `generate`")]:
        print(table_row(name, results[key]))

    if args.disk_full:
        full = os.path.join(work, "full")
        os.makedirs(full)
        disk = []
        for size_kb in (64, 256, 512, 768, 1024):
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", full]).returncode != 0:
                print("(disk full: cannot mount a tmpfs; skipped)")
                break
            try:
                disk.append(case(["convert", "--from", teacher, "--out", os.path.join(full, "student")], True, full, "student"))
            finally:
                subprocess.run(["umount", full])
        if disk:
            print(table_row("disk full during `convert` (tmpfs of 64 KB to 1 MB)", disk))
        recipe = os.path.join(work, "recipe.yaml")
        open(recipe, "w").write(RECIPE.format(teacher=teacher, train=os.path.join(SHARED, "data", "tinystories-train-head", "tinystories_train_head.txt"),
                                              valid=os.path.join(SHARED, "data", "tinystories-valid-head", "tinystories_val.txt")))
        disk, resumed = [], []
        for size_kb in (1024, 2048, 3072, 4096, 6144):
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", full]).returncode != 0:
                break
            try:
                code, _, err = run(["distill", "--recipe", recipe, "--run-dir", os.path.join(full, "run"), "--device", "cpu", "--threads", "1", "--no-tensorboard"])
                # distill reports progress on stderr; its failure is the last line, and no trace anywhere
                lines = [l for l in err.split("\n") if l.strip()]
                kind = classify(code, lines[-1] if lines and not any(l.startswith("   at ") or "Unhandled" in l for l in lines) else err)
                if kind == "crash":
                    sys.stderr.write(f"CRASH distill exit {code}: {err[-600:]}\n")
                stray = [os.path.join(d, e) for d, dirs, files in os.walk(full) for e in dirs + files if ".tmp-" in e or ".old-" in e]
                disk.append("leftover" if stray else "ok" if kind == "accepted" else kind)
                # with room again, the same run must resume to the end
                subprocess.run(["mount", "-o", "remount,size=64m", full])
                code, _, err = run(["distill", "--recipe", recipe, "--run-dir", os.path.join(full, "run"), "--device", "cpu", "--threads", "1", "--no-tensorboard", "--resume"])
                resumed.append(code == 0)
                if code != 0:
                    sys.stderr.write(f"RESUME FAILED exit {code}: {err[-600:]}\n")
            finally:
                subprocess.run(["umount", full])
        if disk:
            print(table_row("disk full during `distill` (tmpfs of 1 to 6 MB)", disk))
            print(f"\nafter each full disk, given room, the same run resumed to the end: {sum(resumed)} of {len(resumed)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
