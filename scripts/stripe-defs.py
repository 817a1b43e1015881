#!/usr/bin/env python3
"""Generates crates/stripe-sim/src/defs/stripe-defs.json from the official
Stripe Node SDK's TypeScript definitions (npm `stripe`, the release whose
API version is billd's pinned one), with the Python SDK of the same API
version (PyPI `stripe`) telling integer parameters from other numbers.

The table holds, for the resources stripe-sim emits and the endpoints it
serves, Stripe's own published shapes: every property of every object
(optional `?` properties are the includable / not-always-present ones,
`| null` the nullable ones), and every parameter of every request. stripe-sim
rejects requests against it and its conformance test walks emitted objects
against it.

Usage:
  python3 scripts/stripe-defs.py            # regenerate the checked-in table
  python3 scripts/stripe-defs.py --check    # exit 1 when it is out of date
  python3 scripts/stripe-defs.py --sdk DIR  # use an unpacked package at DIR

Without --sdk the npm package is fetched with `npm pack` into
$BILLD_SDK_CACHE (default /var/cache/billd-stripe-sdk) once; the PyPI wheel
always comes from there, fetched with `pip download` once.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
import ast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/stripe-sim/src/defs/stripe-defs.json")
# The npm release whose ApiVersion is billd_stripe::API_VERSION.
SDK_VERSION = "23.0.1"
API_VERSION = "2026-09-30.endive"
# The PyPI release of the Python SDK for the same API version: its request
# parameters say `int` or `float` where the Node SDK says `number` for both.
PY_SDK_VERSION = "16.0.1"

# The `object` values stripe-sim emits: each is written with its full shape.
OBJECTS = [
    "account",
    "billing.meter",
    "billing.meter_event",
    "billing.meter_event_summary",
    "billing_portal.configuration",
    "billing_portal.session",
    "charge",
    "checkout.session",
    "coupon",
    "customer",
    "discount",
    "dispute",
    "event",
    "invoice",
    "invoice_payment",
    "invoiceitem",
    "item",
    "line_item",
    "payment_intent",
    "payment_method",
    "plan",
    "price",
    "product",
    "promotion_code",
    "refund",
    "subscription",
    "subscription_item",
    "subscription_schedule",
    "tax.settings",
    "test_helpers.test_clock",
    "webhook_endpoint",
]

# Stripe's includable properties ("not included by default; expand it to
# include it" in the API reference) of those objects: returned only when a
# request's `expand[]` names them, never in webhooks. The SDK types them as
# optional (`?`); the generator checks that each one is.
INCLUDABLE = {
    "charge": ["refunds"],
    "checkout.session": ["line_items"],
    "coupon": ["applies_to", "currency_options"],
    "customer": ["cash_balance", "invoice_credit_balance", "sources", "subscriptions", "tax", "tax_ids"],
    "invoice": ["confirmation_secret", "payments"],
    "plan": ["tiers"],
    "price": ["currency_options", "tiers"],
}

# The endpoints stripe-sim serves (method, path with {} for ids).
ENDPOINTS = [
    ("GET", "/v1/account"),
    ("POST", "/v1/billing/meter_events"),
    ("GET", "/v1/billing/meters"),
    ("POST", "/v1/billing/meters"),
    ("GET", "/v1/billing/meters/{}"),
    ("GET", "/v1/billing/meters/{}/event_summaries"),
    ("GET", "/v1/billing_portal/configurations"),
    ("POST", "/v1/billing_portal/configurations"),
    ("GET", "/v1/billing_portal/configurations/{}"),
    ("POST", "/v1/billing_portal/configurations/{}"),
    ("POST", "/v1/billing_portal/sessions"),
    ("GET", "/v1/charges"),
    ("GET", "/v1/charges/{}"),
    ("GET", "/v1/checkout/sessions"),
    ("POST", "/v1/checkout/sessions"),
    ("GET", "/v1/checkout/sessions/{}"),
    ("POST", "/v1/checkout/sessions/{}/expire"),
    ("GET", "/v1/checkout/sessions/{}/line_items"),
    ("GET", "/v1/coupons"),
    ("POST", "/v1/coupons"),
    ("GET", "/v1/coupons/{}"),
    ("DELETE", "/v1/coupons/{}"),
    ("GET", "/v1/customers"),
    ("POST", "/v1/customers"),
    ("GET", "/v1/customers/search"),
    ("GET", "/v1/customers/{}"),
    ("POST", "/v1/customers/{}"),
    ("DELETE", "/v1/customers/{}"),
    ("GET", "/v1/customers/{}/payment_methods"),
    ("GET", "/v1/disputes"),
    ("GET", "/v1/disputes/{}"),
    ("POST", "/v1/disputes/{}/close"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{}"),
    ("GET", "/v1/invoice_payments"),
    ("GET", "/v1/invoice_payments/{}"),
    ("GET", "/v1/invoices"),
    ("POST", "/v1/invoices/create_preview"),
    ("GET", "/v1/invoices/{}"),
    ("POST", "/v1/invoices/{}/finalize"),
    ("GET", "/v1/invoices/{}/lines"),
    ("POST", "/v1/invoices/{}/pay"),
    ("POST", "/v1/invoices/{}/void"),
    ("GET", "/v1/payment_intents"),
    ("GET", "/v1/payment_intents/{}"),
    ("POST", "/v1/payment_intents/{}/confirm"),
    ("GET", "/v1/payment_methods"),
    ("POST", "/v1/payment_methods"),
    ("GET", "/v1/payment_methods/{}"),
    ("POST", "/v1/payment_methods/{}"),
    ("POST", "/v1/payment_methods/{}/attach"),
    ("POST", "/v1/payment_methods/{}/detach"),
    ("GET", "/v1/prices"),
    ("POST", "/v1/prices"),
    ("GET", "/v1/prices/{}"),
    ("POST", "/v1/prices/{}"),
    ("GET", "/v1/products"),
    ("POST", "/v1/products"),
    ("GET", "/v1/products/{}"),
    ("POST", "/v1/products/{}"),
    ("GET", "/v1/promotion_codes"),
    ("POST", "/v1/promotion_codes"),
    ("GET", "/v1/promotion_codes/{}"),
    ("POST", "/v1/promotion_codes/{}"),
    ("GET", "/v1/refunds"),
    ("POST", "/v1/refunds"),
    ("GET", "/v1/refunds/{}"),
    ("GET", "/v1/subscription_items"),
    ("GET", "/v1/subscription_items/{}"),
    ("POST", "/v1/subscription_schedules"),
    ("GET", "/v1/subscription_schedules/{}"),
    ("POST", "/v1/subscription_schedules/{}"),
    ("POST", "/v1/subscription_schedules/{}/release"),
    ("GET", "/v1/subscriptions"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/search"),
    ("GET", "/v1/subscriptions/{}"),
    ("POST", "/v1/subscriptions/{}"),
    ("DELETE", "/v1/subscriptions/{}"),
    ("POST", "/v1/subscriptions/{}/resume"),
    ("GET", "/v1/tax/settings"),
    ("POST", "/v1/tax/settings"),
    ("GET", "/v1/test_helpers/test_clocks"),
    ("POST", "/v1/test_helpers/test_clocks"),
    ("GET", "/v1/test_helpers/test_clocks/{}"),
    ("DELETE", "/v1/test_helpers/test_clocks/{}"),
    ("POST", "/v1/test_helpers/test_clocks/{}/advance"),
    ("GET", "/v1/webhook_endpoints"),
    ("POST", "/v1/webhook_endpoints"),
    ("GET", "/v1/webhook_endpoints/{}"),
    ("POST", "/v1/webhook_endpoints/{}"),
    ("DELETE", "/v1/webhook_endpoints/{}"),
]


def sdk_dir(arg):
    if arg:
        return arg
    cache = os.environ.get("BILLD_SDK_CACHE", "/var/cache/billd-stripe-sdk")
    unpacked = os.path.join(cache, f"stripe-{SDK_VERSION}")
    if not os.path.isdir(os.path.join(unpacked, "package")):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(
            ["npm", "pack", f"stripe@{SDK_VERSION}", "--silent"],
            cwd=cache,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with tarfile.open(os.path.join(cache, f"stripe-{SDK_VERSION}.tgz")) as t:
            t.extractall(unpacked, filter="data")
    return os.path.join(unpacked, "package")


def py_sdk_dir():
    """The Python SDK's unpacked wheel (fetched with pip into the cache once)."""
    cache = os.environ.get("BILLD_SDK_CACHE", "/var/cache/billd-stripe-sdk")
    unpacked = os.path.join(cache, f"stripe-py-{PY_SDK_VERSION}")
    if not os.path.isdir(os.path.join(unpacked, "stripe", "params")):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary", ":all:", "-d", cache, f"stripe=={PY_SDK_VERSION}"],
            check=True,
        )
        wheel = next(f for f in os.listdir(cache)
                     if f.startswith(f"stripe-{PY_SDK_VERSION}-") and f.endswith(".whl"))
        with zipfile.ZipFile(os.path.join(cache, wheel)) as z:
            z.extractall(unpacked)
    return os.path.join(unpacked, "stripe")


def py_params(stripe_dir):
    """Every TypedDict of the Python SDK's request parameters: class name ->
    {field: annotation source}."""
    api = open(os.path.join(stripe_dir, "_api_version.py")).read()
    if API_VERSION not in api:
        raise SystemExit(f"stripe=={PY_SDK_VERSION} (PyPI) does not speak {API_VERSION}")
    classes = {}
    params = os.path.join(stripe_dir, "params")
    for name in sorted(os.listdir(params)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(params, name)).read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = {
                    item.target.id: ast.unparse(item.annotation)
                    for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                }
    return classes


PY_NAME = re.compile(r"[A-Za-z_]\w*")


def refine_numbers(conv, ann, classes):
    """`conv` (a Node SDK type node) with each `number` the Python SDK types
    as `int` (and never `float`) made `"i"`, following nested classes."""
    names = set(PY_NAME.findall(ann))
    if conv == "n":
        return "i" if "int" in names and not names & {"float", "Decimal"} else conv
    if isinstance(conv, dict):
        if "u" in conv:
            return {"u": [refine_numbers(c, ann, classes) for c in conv["u"]]}
        if "a" in conv:
            return {"a": refine_numbers(conv["a"], ann, classes)}
        if "m" in conv and conv["m"] != "any":
            return {"m": refine_numbers(conv["m"], ann, classes)}
        if "o" in conv:
            nested = [n for n in names if n in classes]
            if len(nested) == 1:
                return refine_object(conv, nested[0], classes)
    return conv


def refine_object(node, cls, classes):
    fields = classes.get(cls)
    if fields is None:
        return node
    out = {}
    for name, (opt, conv) in node["o"].items():
        ann = fields.get(name)
        out[name] = [opt, conv if ann is None else refine_numbers(conv, ann, classes)]
    return {"o": out}


# ------------------------------------------------------------------ parsing

TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)"""
    r"""|(?P<id>[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*)|(?P<p>[|<>{}\[\]:;,?()=&*.]))"""
)


def tokens(text):
    out = []
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"cannot tokenize: {text[pos:pos + 40]!r}")
        pos = m.end()
        for kind in ("str", "num", "id", "p"):
            if m.group(kind) is not None:
                out.append((kind, m.group(kind)))
    return out


def strip_comments(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


class File:
    """One .d.ts file: its declarations (qualified names) and imports."""

    def __init__(self, path, rel):
        self.path = path
        self.rel = rel  # e.g. "Checkout/Sessions"
        self.dir = os.path.dirname(rel)
        self.decls = {}  # qualified name -> ("interface", extends, members) | ("type", typeexpr)
        self.imports = {}  # local name -> (module rel path, exported name) or (dir, None) for `* as`
        self.classes = {}  # class name -> {method: params type name}
        src = strip_comments(open(path).read())
        for m in re.finditer(r"import \{([^}]*)\} from '([^']+)'", src):
            mod = os.path.normpath(os.path.join(self.dir, m.group(2)))[: -len(".js")]
            for part in m.group(1).split(","):
                part = part.strip()
                if not part:
                    continue
                name, _, alias = part.partition(" as ")
                self.imports[(alias or name).strip()] = (mod, name.strip())
        for m in re.finditer(r"import \* as (\w+) from '([^']+)'", src):
            mod = os.path.normpath(os.path.join(self.dir, m.group(2)))
            self.imports[m.group(1)] = (os.path.dirname(mod), None)
        self.toks = tokens(src)
        self.i = 0
        self.parse_block([])

    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, v):
        t = self.next()
        if t[1] != v:
            raise ValueError(f"{self.rel}: expected {v!r}, got {t!r} near {self.toks[self.i:self.i + 8]}")

    def skip_balanced(self, open_, close):
        depth = 0
        while True:
            t = self.next()
            if t[1] == open_:
                depth += 1
            elif t[1] == close:
                depth -= 1
                if depth == 0:
                    return

    def parse_block(self, scope):
        while self.i < len(self.toks):
            kind, v = self.peek()
            if v == "}":
                self.next()
                return
            if v in ("export", "declare"):
                self.next()
                continue
            if v == "import":
                while self.next()[1] != ";":
                    pass
                continue
            if v == "namespace":
                self.next()
                name = self.next()[1]
                self.expect("{")
                self.parse_block(scope + [name])
                continue
            if v == "interface":
                self.next()
                name = self.next()[1]
                if self.peek()[1] == "<":
                    self.skip_balanced("<", ">")
                extends = []
                if self.peek()[1] == "extends":
                    self.next()
                    while self.peek()[1] != "{":
                        t = self.next()
                        if t[0] == "id":
                            extends.append(t[1])
                        if self.peek()[1] == "<":
                            self.skip_balanced("<", ">")
                self.expect("{")
                members = self.parse_members()
                self.decls[".".join(scope + [name])] = ("interface", extends, members)
                continue
            if v == "type":
                self.next()
                name = self.next()[1]
                if self.peek()[1] == "<":
                    self.skip_balanced("<", ">")
                self.expect("=")
                ty = self.parse_type()
                if self.peek()[1] == ";":
                    self.next()
                self.decls[".".join(scope + [name])] = ("type", ty)
                continue
            if v == "class":
                self.next()
                name = self.next()[1]
                while self.peek()[1] != "{":
                    self.next()
                self.next()
                self.classes[name] = self.parse_class()
                continue
            if v in ("const", "function", "let", "var"):
                depth = 0
                while True:
                    t = self.next()
                    if t[1] in "({<[":
                        depth += 1
                    elif t[1] in ")}>]":
                        depth -= 1
                    elif t[1] == ";" and depth == 0:
                        break
                continue
            if v == "{":
                # `export { X } from ...`
                self.skip_balanced("{", "}")
                while self.peek()[1] not in (";", None):
                    self.next()
                if self.peek()[1] == ";":
                    self.next()
                continue
            if v in (";", "from") or kind == "str":
                self.next()
                continue
            raise ValueError(f"{self.rel}: unexpected {v!r} near {self.toks[self.i:self.i + 10]}")

    def parse_class(self):
        methods = {}
        while True:
            t = self.next()
            if t[1] == "}":
                return methods
            name = t[1]
            if self.peek()[1] == "<":
                self.skip_balanced("<", ">")
            if self.peek()[1] != "(":
                # a property
                while self.next()[1] != ";":
                    pass
                continue
            start = self.i
            self.skip_balanced("(", ")")
            args = self.toks[start:self.i]
            params_type = None
            for j, a in enumerate(args):
                if a[1] == "params" and args[j + 1][1] in (":", "?"):
                    k = j + 1
                    while args[k][1] in (":", "?"):
                        k += 1
                    params_type = args[k][1]
            # the return type, up to `;`
            depth = 0
            while True:
                t = self.next()
                if t[1] in "<({":
                    depth += 1
                elif t[1] in ">)}":
                    depth -= 1
                elif t[1] == ";" and depth == 0:
                    break
            methods.setdefault(name, params_type)

    def parse_members(self):
        """Members up to the closing brace: {name: (optional, type)}."""
        members = {}
        while True:
            kind, v = self.peek()
            if v == "}":
                self.next()
                return members
            if v == ";" or v == ",":
                self.next()
                continue
            if v == "[":
                # index signature `[name: string]: T`
                self.skip_balanced("[", "]")
                self.expect(":")
                members["*"] = (True, self.parse_type())
                continue
            if v == "readonly":
                self.next()
                continue
            name = self.next()[1]
            if kind == "str":
                name = name.strip("'")
            opt = False
            if self.peek()[1] == "?":
                self.next()
                opt = True
            if self.peek()[1] == "(":
                # a method signature: not data
                self.skip_balanced("(", ")")
                self.expect(":")
                self.parse_type()
                continue
            self.expect(":")
            members[name] = (opt, self.parse_type())

    def parse_type(self):
        alts = [self.parse_inter()]
        while self.peek()[1] == "|":
            self.next()
            alts.append(self.parse_inter())
        return alts[0] if len(alts) == 1 else ("union", alts)

    def parse_inter(self):
        t = self.parse_primary()
        while self.peek()[1] == "&":
            # an intersection: only SDK plumbing uses these; keep the first part
            self.next()
            self.parse_primary()
        return t

    def parse_primary(self):
        kind, v = self.next()
        if v == "|":
            kind, v = self.next()
        if kind == "str":
            t = ("lit", v[1:-1])
        elif kind == "num":
            t = ("lit", float(v))
        elif v == "{":
            t = ("obj", [], self.parse_members())
        elif v == "(":
            start = self.i - 1
            self.i = start
            self.skip_balanced("(", ")")
            if self.peek()[1] == "=" and self.peek(1)[1] == ">":
                # a function type: SDK plumbing, not data
                self.next()
                self.next()
                self.parse_type()
                t = ("ref", "any", [])
            else:
                self.i = start + 1
                t = self.parse_type()
                self.expect(")")
        elif v == "import" and self.peek()[1] == "(":
            # `import("../Types.js").Name`: SDK plumbing, not data
            self.skip_balanced("(", ")")
            while self.peek()[1] == ".":
                self.next()
                self.next()
            t = ("ref", "any", [])
        elif kind == "id":
            args = []
            if self.peek()[1] == "<":
                self.next()
                args.append(self.parse_type())
                while self.peek()[1] == ",":
                    self.next()
                    args.append(self.parse_type())
                self.expect(">")
            t = ("ref", v, args)
        else:
            raise ValueError(f"{self.rel}: type starts with {v!r} near {self.toks[self.i - 3:self.i + 8]}")
        while self.peek()[1] == "[" and self.peek(1)[1] == "]":
            self.next()
            self.next()
            t = ("ref", "Array", [t])
        return t


class Sdk:
    def __init__(self, pkg):
        base = os.path.join(pkg, "cjs")
        self.files = {}
        for dirpath, _, names in os.walk(os.path.join(base, "resources")):
            if "/V2" in dirpath:
                continue  # API v2: nothing billd uses
            for n in sorted(names):
                if n.endswith(".d.ts") and n != "index.d.ts":
                    p = os.path.join(dirpath, n)
                    rel = os.path.relpath(p, os.path.join(base, "resources"))[: -len(".d.ts")]
                    self.files[rel] = File(p, rel)
        self.files["../shared"] = File(os.path.join(base, "shared.d.ts"), "../shared")
        self.js = {}
        for rel in self.files:
            jp = os.path.join(base, "resources", rel + ".js")
            if os.path.exists(jp):
                self.js[rel] = open(jp).read()

    def resolve(self, f, scope, name):
        """(file, qualified name) of a type reference seen in `f` within `scope`."""
        for k in range(len(scope), -1, -1):
            q = ".".join(scope[:k] + [name])
            if q in f.decls:
                return f, q
        first, _, rest = name.partition(".")
        if first in f.imports:
            mod, exported = f.imports[first]
            if exported is None:
                # `import * as NS`: rest is `Name[.More]` of some file in NS/
                head = rest.split(".")[0]
                for rel, g in self.files.items():
                    if os.path.dirname(rel) == mod and head in g.decls:
                        return g, rest
                return None
            g = self.files.get(mod)
            if g is None:
                return None
            q = exported + ("." + rest if rest else "")
            if q in g.decls:
                return g, q
            return None
        return None


PRIM = {"string": "s", "number": "n", "boolean": "b", "null": "null", "void": "void",
        "true": "true", "false": "false", "any": "any", "unknown": "any", "Decimal": "d",
        "OtherString": "s", "Date": "any"}


def is_deleted(members):
    """A `Deleted*` interface: `deleted: true` (live ones have `deleted?: void`)."""
    d = members.get("deleted")
    return d is not None and d[1] == ("ref", "true", [])


class Gen:
    def __init__(self, sdk):
        self.sdk = sdk
        self.by_object = {}  # object name -> (file, qname)
        for f in sdk.files.values():
            for q, d in f.decls.items():
                if d[0] != "interface":
                    continue
                obj = d[2].get("object")
                if obj and obj[1][0] == "lit" and "." not in q:
                    name = obj[1][1]
                    key = ("deleted:" + name) if is_deleted(d[2]) else name
                    self.by_object.setdefault(key, (f, q))

    def convert(self, f, scope, t, stack):
        kind = t[0]
        if kind == "lit":
            return {"e": [t[1]]}
        if kind == "union":
            alts = [self.convert(f, scope, a, stack) for a in t[1]]
            # merge literal alternatives into one enum
            enum, rest = [], []
            for a in alts:
                if isinstance(a, dict) and "e" in a:
                    enum += a["e"]
                elif isinstance(a, dict) and "u" in a:
                    for b in a["u"]:
                        if isinstance(b, dict) and "e" in b:
                            enum += b["e"]
                        else:
                            rest.append(b)
                else:
                    rest.append(a)
            if enum:
                rest.insert(0, {"e": sorted(set(enum), key=str)})
            out = []
            for a in rest:
                if a not in out:
                    out.append(a)
            return out[0] if len(out) == 1 else {"u": out}
        if kind == "obj":
            return self.members(f, scope, t[2], stack)
        name, args = t[1], t[2]
        if name in PRIM:
            return PRIM[name]
        if name in ("Array",):
            return {"a": self.convert(f, scope, args[0], stack)}
        if name == "ApiList":
            return {"l": self.convert(f, scope, args[0], stack)}
        if name == "ApiSearchResult":
            return {"sr": self.convert(f, scope, args[0], stack)}
        if name == "Emptyable":
            return self.convert(f, scope, ("union", [args[0], ("lit", "")]), stack)
        if name in ("Metadata", "MetadataParam", "Record"):
            return {"m": "any"}
        if name == "Stripe.Emptyable":
            return self.convert(f, scope, ("union", [args[0], ("lit", "")]), stack)
        found = self.sdk.resolve(f, scope, name)
        if found is None:
            found = self.sdk.resolve(self.sdk.files["../shared"], [], name.split(".")[-1])
        if found is None:
            return "any"
        g, q = found
        d = g.decls[q]
        if d[0] == "interface":
            obj = d[2].get("object")
            if obj and obj[1][0] == "lit" and "." not in q:
                key = ("deleted:" + obj[1][1]) if is_deleted(d[2]) else obj[1][1]
                return {"r": key}
        key = (g.rel, q)
        if key in stack:
            return "any"
        stack = stack + [key]
        qscope = q.split(".")
        if d[0] == "type":
            return self.convert(g, qscope[:-1], d[1], stack)
        return self.interface(g, qscope, d, stack)

    def interface(self, g, qscope, d, stack):
        members = dict(d[2])
        out = self.members(g, qscope[:-1] + [qscope[-1]], members, stack)
        for ext in d[1]:
            if ext == "PaginationParams":
                for k in ("limit", "starting_after", "ending_before"):
                    out["o"][k] = [1, "n" if k == "limit" else "s"]
            else:
                base = self.convert(g, qscope[:-1], ("ref", ext, []), stack)
                if isinstance(base, dict) and "o" in base:
                    for k, v in base["o"].items():
                        out["o"].setdefault(k, v)
        return out

    def members(self, f, scope, members, stack):
        fields = {}
        for name, (opt, ty) in members.items():
            conv = self.convert(f, scope, ty, stack)
            if name == "*":
                return {"m": conv}
            fields[name] = [1 if opt else 0, conv]
        return {"o": fields}

    def objects(self):
        out = {}
        for name in OBJECTS + ["deleted:" + n for n in OBJECTS]:
            if name not in self.by_object:
                if name.startswith("deleted:"):
                    continue
                raise SystemExit(f"no SDK interface has object: '{name}'")
            f, q = self.by_object[name]
            out[name] = self.interface(f, q.split("."), f.decls[q], [(f.rel, q)])
        return out

    def endpoints(self):
        table = {}
        method_re = re.compile(r"^    (\w+)\([^)]*\) \{$", re.M)
        call = re.compile(r"_makeRequest\('(\w+)',\s*[`']([^`']+)[`']")
        for rel, js in self.sdk.js.items():
            f = self.sdk.files[rel]
            methods = {}
            for c in f.classes.values():
                methods.update(c)
            defs = list(method_re.finditer(js))
            for k, m in enumerate(defs):
                body = js[m.end(): defs[k + 1].start() if k + 1 < len(defs) else len(js)]
                for c in call.finditer(body):
                    path = re.sub(r"\$\{[^}]*\}", "{}", c.group(2))
                    table.setdefault((c.group(1), path), (f, methods.get(m.group(1))))
        out = {}
        for http, path in ENDPOINTS:
            if (http, path) not in table:
                raise SystemExit(f"the SDK has no endpoint {http} {path}")
            f, ptype = table[(http, path)]
            if ptype is None:
                out[f"{http} {path}"] = {"o": {}}
                continue
            d = f.decls[ptype]
            params = self.interface(f, ptype.split("."), d, [(f.rel, ptype)])
            # Both SDKs are generated from one spec and name a parameter
            # class alike (Node's `A.B` is Python's `AB`).
            out[f"{http} {path}"] = refine_object(params, ptype.replace(".", ""), self.py)
        return out


def generate(pkg):
    api = re.search(r"ApiVersion = '([^']+)'", open(os.path.join(pkg, "cjs/apiVersion.js")).read()).group(1)
    if api != API_VERSION:
        raise SystemExit(f"stripe@{SDK_VERSION} speaks {api}, not {API_VERSION}")
    sdk = Sdk(pkg)
    gen = Gen(sdk)
    gen.py = py_params(py_sdk_dir())
    doc = {
        "sdk": f"stripe@{SDK_VERSION} (npm), integers from stripe=={PY_SDK_VERSION} (PyPI)",
        "api_version": api,
        "objects": gen.objects(),
        "endpoints": gen.endpoints(),
        "includable": INCLUDABLE,
    }
    for kind, fields in INCLUDABLE.items():
        for f in fields:
            if doc["objects"][kind]["o"][f][0] != 1:
                raise SystemExit(f"{kind}.{f} is not optional in the SDK: not includable")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def main():
    args = sys.argv[1:]
    pkg = None
    if "--sdk" in args:
        pkg = args[args.index("--sdk") + 1]
    text = generate(sdk_dir(pkg))
    if "--check" in args:
        have = open(OUT).read() if os.path.exists(OUT) else ""
        if have != text:
            print(f"{os.path.relpath(OUT, ROOT)} is out of date: run python3 scripts/stripe-defs.py", file=sys.stderr)
            sys.exit(1)
        print("stripe-defs: up to date")
        return
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
