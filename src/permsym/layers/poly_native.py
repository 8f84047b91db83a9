r"""Single-pass C++ kernels for ``OrthoPoly(compile=True)`` on the CPU.

Inductor compiles the forward well, but not the backward: it cannot fuse the per-unit
coefficient gradients $\sum_{\text{rows}} g\, u_k(s(x))$ (a reduction over the outer axis)
with the pointwise $\partial L/\partial x$, so its backward reads $x$ and $g$ twice and
writes $s(x)$ in between (:func:`permsym.layers.poly_autograd.compiled_kernels`). The
kernels here are generated per recurrence as C++ over ``at::vec::Vectorized`` (the vector
type inductor's own kernels use) and built by inductor's C++ toolchain (same compiler,
flags and on-disk cache as ``torch.compile``):

* forward: one sweep, $y = \sum_k a_k u_k(s(x))$;
* backward: one sweep that writes $g \cdot f'(s(x)) \cdot s'(x)$ and adds $g\,u_k$ into
  per-unit accumulators: in registers over a block of 8 rows (then float32 sums over 64
  rows, then float64) or over a piece of a run (then float64); per-thread sums are added
  in thread order, so a run is deterministic for a given thread count.

Inputs use the canonical layouts of the compiled path: per-unit ``(B, C, S)`` (rows layout
when ``S == 1``: units along the vector lanes; runs layout otherwise: each ``(b, c)`` run
of ``S`` elements with broadcast coefficients) and shared ``(N,)`` (one run, ``C = 1``).
Runs are cut into pieces of :data:`PIECE` elements, the unit of work of a thread.

Every domain map has a native form (:data:`NATIVE_MAPS`); other devices, other dtypes and
machines where inductor finds no vector ISA use inductor's kernels.
The calls go through ``torch.library`` custom ops, so an outer ``torch.compile`` sees
opaque operators with known output shapes.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import torch

from permsym.layers.poly_maps import half_pi_coefficients

NATIVE_MAPS = ("identity", "tanh", "softplus", "erf", "arcsine", "exponential")
ENABLED = True
"""Switch for the native kernels (``False``: ``compile=True`` uses inductor's kernels only)."""

PIECE = 4096  # elements of a run per task (runs layout)
ROW_BLOCK = 8  # rows layout: rows per block (coefficients and sums stay in registers over it)
_FLUSH_ROWS = 64  # rows layout: float32 partial sums are moved to float64 every this many rows
_CTYPE = {torch.float32: "float", torch.float64: "double"}
_RECURRENCES: dict[str, Any] = {}
_BUILT: dict[tuple, Any] = {}


def supports(x: torch.Tensor, rec: Any) -> bool:
    """True when the native kernels handle ``x`` (CPU, float32/float64) and ``rec``'s map,
    and inductor builds vectorised C++ on this machine (``at::vec`` needs a vector ISA)."""
    ok = ENABLED and x.device.type == "cpu" and x.dtype in _CTYPE and rec.map_name in NATIVE_MAPS
    if not ok:
        return False
    if _VECTOR_ISA[0] is None:
        if torch.compiler.is_compiling():  # not probed yet (the layer was unpickled): inductor
            return False
        vector_isa()
    return bool(_VECTOR_ISA[0])


_VECTOR_ISA: list[bool | None] = [None]


def vector_isa() -> bool:
    """Whether inductor finds a vector ISA here (probed once; ``OrthoPoly(compile=True)``
    probes on construction, outside any tracing)."""
    if _VECTOR_ISA[0] is None:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        _VECTOR_ISA[0] = bool(pick_vec_isa())
    return bool(_VECTOR_ISA[0])


def register(rec: Any) -> None:
    """Make ``rec`` findable by ``rec.key`` (custom ops take strings, not dataclasses)."""
    _RECURRENCES.setdefault(rec.key, rec)


def _recurrence(key: str) -> Any:
    """The recurrence named ``key``: registered, or rebuilt from the key itself (a module
    unpickled in a fresh process never ran the constructor that registers it)."""
    if key not in _RECURRENCES:
        from permsym.layers.poly_autograd import Recurrence

        try:
            map_name, per_unit, first, steps = key.split("/", 3)
            pair = lambda p: (float(p[0]), float(p[1]))  # noqa: E731
            rec = Recurrence(pair(ast.literal_eval(first)), tuple(map(pair, ast.literal_eval(steps))), map_name, per_unit == "1")
        except (ValueError, TypeError, IndexError, SyntaxError):
            rec = None
        if rec is None or rec.key != key:
            raise ValueError(f"poly_native: malformed recurrence key {key!r}")
        _RECURRENCES[key] = rec
    return _RECURRENCES[key]


# --------------------------------------------------------------------------- code generation


def _lit(value: float) -> str:
    return f"T({float(value)!r})"


def _map_lines(name: str, single: bool, need_d: bool) -> list[str]:
    """C++ lines defining ``t`` = s(x) and, when ``need_d``, ``d`` = s'(x) from ``xv``."""
    if name == "identity":
        return ["const Vec t = xv;"]
    if name == "tanh":
        lines = ["const Vec t = xv.tanh();"]
        return lines + (["const Vec d = Vec(T(1)) - t * t;"] if need_d else [])
    if name == "softplus":  # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); s' = 1 / (1 + e^-x)
        lines = ["const Vec t = at::vec::maximum(xv, Vec(T(0))) + (-xv.abs()).exp().log1p();"]
        return lines + (["const Vec d = Vec(T(1)) / (Vec(T(1)) + (-xv).exp());"] if need_d else [])
    if name == "exponential":
        return _exponential_lines(single, need_d)
    if name not in ("erf", "arcsine"):
        raise ValueError(f"no native form for map {name!r}")
    lines = _erf_lines(single, need_d)  # ev = erf(x / sqrt 2), gauss = e^{-x^2/2} when need_d
    if name == "erf":
        return lines + (["const Vec t = ev;"] + ([f"const Vec d = gauss * {_lit(math.sqrt(2 / math.pi))};"] if need_d else []))
    if name == "arcsine":  # t = sin(pi/2 e), s' = cos(pi/2 e) * (pi/2) sqrt(2/pi) e^{-x^2/2}
        lines.append("const Vec ev2 = ev * ev;")
        lines.append(f"const Vec t = {_horner(half_pi_coefficients('sin', single), 'ev2')} * ev;")
        if need_d:
            scale = 0.5 * math.pi * math.sqrt(2 / math.pi)
            lines.append(f"const Vec d = {_horner(half_pi_coefficients('cos', single), 'ev2')} * gauss * {_lit(scale)};")
    return lines


# torch's float32 erf (at::vec, Abramowitz-Stegun 7.1.26, |error| < 1.5e-7):
# erf(z) = sign(z) (1 - t r(t) e^{-z^2}), t = 1 / (1 + p |z|); written out so that the
# backward reuses e^{-z^2} = e^{-x^2/2} for s'(x) instead of a second exp
_AS_P = 0.3275911
_AS_R = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf_lines(single: bool, need_d: bool) -> list[str]:
    half = f"xv * xv * {_lit(-0.5)}"
    if not (single and need_d):  # torch's erf (double: Sleef's, 1 ulp) and, if needed, an exp
        return [f"const Vec ev = (xv * {_lit(1 / math.sqrt(2))}).erf();"] + ([f"const Vec gauss = ({half}).exp();"] if need_d else [])
    return [
        f"const Vec za = (xv * {_lit(1 / math.sqrt(2))}).abs();",
        f"const Vec ti = Vec(T(1)) / fmadd(Vec({_lit(_AS_P)}), za, Vec(T(1)));",
        f"const Vec gauss = ({half}).exp();",
        f"const Vec ea = fmadd(-(ti * gauss), {_horner(list(_AS_R), 'ti')}, Vec(T(1)));",
        "const Vec ev = ea.copysign(xv);",
    ]


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _exponential_lines(single: bool, need_d: bool) -> list[str]:
    r"""$t = -\log \Phi(-x)$ in three pieces, each accurate where it is used: for $x \le 0$,
    $-\log1p(-\tfrac12 \operatorname{erfc}(-x/\sqrt2))$; up to $X$ (where erfc is still a
    normal number), $-\log(\tfrac12 \operatorname{erfc}(x/\sqrt2))$; beyond, the asymptotic
    $x^2/2 + \log x + \log\sqrt{2\pi} - \log(1 - x^{-2} + 3x^{-4} - 15x^{-6} + \dots)$ cut
    below the dtype's rounding at $X$ ($X = 10$, 5 terms single; $X = 25$, 8 terms double).
    $s'(x) = \phi(x)/\Phi(-x) = e^{-x^2/2 - \log\sqrt{2\pi} + t}$, as in the eager map."""
    cut, terms = (10.0, 5) if single else (25.0, 8)
    series = [1.0]
    for k in range(1, terms + 1):
        series.append(-series[-1] * (2 * k - 1))
    lines = [
        f"const Vec z = xv * {_lit(1 / math.sqrt(2))};",
        f"const Vec t_low = -((-z).erfc() * Vec({_lit(-0.5)})).log1p();",
        f"const Vec t_mid = -(z.erfc() * Vec({_lit(0.5)})).log();",
        "const Vec r2 = Vec(T(1)) / (xv * xv);",
        f"const Vec t_high = fmadd(xv * xv, Vec({_lit(0.5)}), xv.log() + Vec({_lit(_LOG_SQRT_2PI)})) - ({_horner(series, 'r2')}).log();",
        f"const Vec t = Vec::blendv(Vec::blendv(t_low, t_mid, xv > Vec(T(0))), t_high, xv > Vec({_lit(cut)}));",
    ]
    if need_d:
        lines.append(f"const Vec d = (fmadd(xv * xv, Vec({_lit(-0.5)}), t) - Vec({_lit(_LOG_SQRT_2PI)})).exp();")
    return lines


def _horner(coeffs: list[float], var: str) -> str:
    expr = f"Vec({_lit(coeffs[-1])})"
    for c in reversed(coeffs[:-1]):
        expr = f"fmadd({expr}, {var}, Vec({_lit(c)}))"
    return expr


def _recurrence_lines(rec: Any, count: int) -> list[str]:
    """Lines defining ``u1 .. u{count}`` from ``t`` ($u_0 = 1$)."""
    if count < 1:
        return []
    scale, shift = rec.first
    lines = [f"const Vec u1 = fmadd(t, Vec({_lit(scale)}), Vec({_lit(shift)}));"]
    factors: dict[tuple[float, float], str] = {}
    for n, (v, w) in enumerate(rec.steps[: count - 1], start=1):
        if (v, w) not in factors:  # v t + w, shared by the steps that use it (Chebyshev: 2)
            factors[(v, w)] = f"f{len(factors)}"
            value = f"t * Vec({_lit(v)})" if not w else f"fmadd(t, Vec({_lit(v)}), Vec({_lit(w)}))"
            lines.append(f"const Vec {factors[(v, w)]} = {value};")
        prev = "Vec(T(1))" if n == 1 else f"u{n - 1}"
        lines.append(f"const Vec u{n + 1} = fmadd({factors[(v, w)]}, u{n}, {prev});")
    return lines


def _forward_body(rec: Any, size: int, single: bool) -> list[str]:
    """Lines computing and storing ``y`` at ``i`` from ``xv``, coefficients ``a_k``."""
    lines = _map_lines(rec.map_name, single, False) + _recurrence_lines(rec, size - 1)
    y = "a_0"
    for k in range(1, size):
        y = f"fmadd(a_{k}, u{k}, {y})"
    return lines + [f"({y}).store(y + i, n);"]


def _backward_body(rec: Any, size: int, single: bool, need_x: bool, need_a: bool) -> list[str]:
    """Lines storing ``grad_x`` at ``i`` (coefficients ``e_k``) and adding $g \\, u_k$ into
    the register accumulators ``r_k``."""
    highest = size - 1 if need_a else size - 2
    lines = ["const Vec gv = Vec::loadu(g + i, n);"]
    lines += _map_lines(rec.map_name, single, need_x) + _recurrence_lines(rec, highest)
    if need_x:
        dy = "e_0"
        for k in range(1, size - 1):
            dy = f"fmadd(e_{k}, u{k}, {dy})"
        d = "" if rec.map_name == "identity" else " * d"
        lines.append(f"(({dy}) * gv{d}).store(gx + i, n);")
    if need_a:
        lines += ["r_0 = r_0 + gv;"] + [f"r_{k} = fmadd(gv, u{k}, r_{k});" for k in range(1, size)]
    return lines


_PRELUDE = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
#include <algorithm>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
using T = {ctype};
using Vec = at::vec::Vectorized<T>;
using at::vec::fmadd;
constexpr int64_t V = Vec::size();
static inline int thread_id() {{
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}}
// Per-thread coefficient-gradient sums: thread 0 adds into ga, thread p > 0 into
// part[p - 1]; add_partials then adds them to ga in thread order (deterministic). The buffer
// is reused from call to call (no heap traffic); being thread_local, it is used inside the
// parallel region only through the returned pointer.
static inline double* partials(double* ga, int64_t threads, int64_t size) {{
  static thread_local std::vector<double> buffer;
  buffer.assign((threads - 1) * size, 0.0);
  std::fill(ga, ga + size, 0.0);
  return buffer.data();
}}
static inline double* own_partial(double* ga, double* part, int64_t size) {{
  const int id = thread_id();
  return id == 0 ? ga : part + (id - 1) * size;
}}
static inline void add_partials(double* ga, const double* part, int64_t threads, int64_t size) {{
  for (int64_t p = 0; p + 1 < threads; ++p)
    for (int64_t j = 0; j < size; ++j) ga[j] += part[p * size + j];
}}
"""

_FORWARD_ROWS = r"""
extern "C" void kernel(const T* x, const T* a, T* y, int64_t B, int64_t C, int64_t S, int64_t threads) {{
  #pragma omp parallel for num_threads(threads) if(threads > 1) schedule(static)
  for (int64_t b0 = 0; b0 < B; b0 += {block}) {{
    const int64_t end = std::min(B, b0 + {block}) * C;
    for (int64_t c = 0; c < C; c += V) {{
      const int64_t n = std::min<int64_t>(V, C - c);
      {coefficients}
      for (int64_t i = b0 * C + c; i < end; i += C) {{
        const Vec xv = Vec::loadu(x + i, n);
        {body}
      }}
    }}
  }}
}}
"""

_RUN_TASKS = r"""
  const int64_t pieces = (S + {piece} - 1) / {piece};
  const int64_t tasks = B * C * pieces;
"""

_FORWARD_RUNS = r"""
extern "C" void kernel(const T* x, const T* a, T* y, int64_t B, int64_t C, int64_t S, int64_t threads) {{
  {tasks}
  #pragma omp parallel for num_threads(threads) if(threads > 1) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {{
    const int64_t run = task / pieces, c = run % C;
    const int64_t lo = run * S + (task % pieces) * {piece};
    const int64_t hi = std::min(lo + {piece}, (run + 1) * S);
    {coefficients}
    for (int64_t i = lo; i < hi; i += V) {{
      const int64_t n = std::min<int64_t>(V, hi - i);
      const Vec xv = Vec::loadu(x + i, n);
      {body}
    }}
  }}
}}
"""

_BACKWARD_ROWS = r"""
extern "C" void kernel(const T* x, const T* g, const T* e, T* gx, double* ga, int64_t B, int64_t C, int64_t S, int64_t threads) {{
  const int64_t K = {size}, Cp = (C + V - 1) / V * V;
  double* const part = {need_a} ? partials(ga, threads, K * C) : nullptr;
  #pragma omp parallel num_threads(threads) if(threads > 1)
  {{
    static thread_local std::vector<T> acc_buffer;
    acc_buffer.assign({need_a} ? K * Cp : 0, T(0));
    T* acc = acc_buffer.data();
    double* const mine = {need_a} ? own_partial(ga, part, K * C) : nullptr;
    int64_t pending = 0;
    auto flush = [&]() {{
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < C; ++c) {{ mine[k * C + c] += acc[k * Cp + c]; acc[k * Cp + c] = T(0); }}
      pending = 0;
    }};
    #pragma omp for schedule(static)
    for (int64_t b0 = 0; b0 < B; b0 += {block}) {{
      const int64_t end = std::min(B, b0 + {block}) * C;
      for (int64_t c = 0; c < C; c += V) {{
        const int64_t n = std::min<int64_t>(V, C - c);
        {coefficients}
        {accumulators}
        for (int64_t i = b0 * C + c; i < end; i += C) {{
          const Vec xv = Vec::loadu(x + i, n);
          {body}
        }}
        {store}
      }}
      if ({need_a} && (pending += {block}) >= {flush_rows}) flush();
    }}
    if ({need_a}) flush();
  }}
  if ({need_a}) add_partials(ga, part, threads, K * C);
}}
"""

_BACKWARD_RUNS = r"""
extern "C" void kernel(const T* x, const T* g, const T* e, T* gx, double* ga, int64_t B, int64_t C, int64_t S, int64_t threads) {{
  const int64_t K = {size};
  {tasks}
  double* const part = {need_a} ? partials(ga, threads, K * C) : nullptr;
  #pragma omp parallel num_threads(threads) if(threads > 1)
  {{
    double* const mine = {need_a} ? own_partial(ga, part, K * C) : nullptr;
    #pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {{
      const int64_t run = task / pieces, c = run % C;
      const int64_t lo = run * S + (task % pieces) * {piece};
      const int64_t hi = std::min(lo + {piece}, (run + 1) * S);
      {coefficients}
      {accumulators}
      for (int64_t i = lo; i < hi; i += V) {{
        const int64_t n = std::min<int64_t>(V, hi - i);
        const Vec xv = Vec::loadu(x + i, n);
        {body}
      }}
      {reduce}
    }}
  }}
  if ({need_a}) add_partials(ga, part, threads, K * C);
}}
"""


def _broadcasts(name: str, count: int) -> str:
    return " ".join(f"const Vec {name}_{k}({name}[{k} * C + c]);" for k in range(count))


def _loads(name: str, count: int) -> str:
    return " ".join(f"const Vec {name}_{k} = Vec::loadu({name} + {k} * C + c, n);" for k in range(count))


def forward_source(rec: Any, size: int, dtype: torch.dtype, rows: bool) -> str:
    """C++ source of the forward kernel (``size`` = degree + 1 coefficients)."""
    body = "\n        ".join(_forward_body(rec, size, dtype == torch.float32))
    prelude = _PRELUDE.format(ctype=_CTYPE[dtype])
    if rows:
        return prelude + _FORWARD_ROWS.format(body=body, block=ROW_BLOCK, coefficients=_loads("a", size))
    tasks = _RUN_TASKS.format(piece=PIECE)
    return prelude + _FORWARD_RUNS.format(body=body, tasks=tasks, piece=PIECE, coefficients=_broadcasts("a", size))


def backward_source(rec: Any, size: int, dtype: torch.dtype, rows: bool, need_x: bool, need_a: bool) -> str:
    """C++ source of the backward kernel; ``ga`` gets $\\sum g\\,u_k$ per unit (float64)."""
    body = "\n          ".join(_backward_body(rec, size, dtype == torch.float32, need_x, need_a))
    prelude = _PRELUDE.format(ctype=_CTYPE[dtype])
    flag = "true" if need_a else "false"
    count = max(size - 1, 1) if need_x else 0
    accumulators = " ".join(f"Vec r_{k}(T(0));" for k in range(size)) if need_a else ""
    if rows:
        store = " ".join(
            f"(Vec::loadu(acc + {k} * Cp + c) + r_{k}).store(acc + {k} * Cp + c);" for k in range(size)
        ) if need_a else ""
        return prelude + _BACKWARD_ROWS.format(
            body=body, size=size, need_a=flag, flush_rows=_FLUSH_ROWS, block=ROW_BLOCK,
            coefficients=_loads("e", count), accumulators=accumulators, store=store,
        )
    reduce = ""
    if need_a:
        reduce = "alignas(64) T lanes[V]; " + " ".join(
            f"r_{k}.store(lanes); for (int64_t l = 0; l < V; ++l) mine[{k} * C + c] += lanes[l];" for k in range(size)
        )
    return prelude + _BACKWARD_RUNS.format(
        body=body, size=size, need_a=flag, tasks=_RUN_TASKS.format(piece=PIECE), piece=PIECE,
        coefficients=_broadcasts("e", count), accumulators=accumulators, reduce=reduce,
    )


def _kernel(kind: str, rec: Any, size: int, dtype: torch.dtype, rows: bool, need_x: bool = True, need_a: bool = True) -> Any:
    key = (kind, rec, size, dtype, rows, need_x, need_a)
    if key not in _BUILT:
        from torch._inductor.codecache import CppPythonBindingsCodeCache

        ptr = f"{_CTYPE[dtype]}*"
        if kind == "forward":
            source = forward_source(rec, size, dtype, rows)
            args = [f"const {ptr}", f"const {ptr}", ptr]
        else:
            source = backward_source(rec, size, dtype, rows, need_x, need_a)
            args = [f"const {ptr}", f"const {ptr}", f"const {ptr}", ptr, "double*"]
        _BUILT[key] = CppPythonBindingsCodeCache.load_pybinding([*args, "int64_t", "int64_t", "int64_t", "int64_t"], source)
    return _BUILT[key]


# --------------------------------------------------------------------------- custom ops


def _dims(x: torch.Tensor) -> tuple[int, int, int, bool]:
    """``(B, C, S, rows)`` of a canonical input: ``(B, C, S)`` per unit or ``(N,)`` shared."""
    if x.dim() == 1:
        return 1, 1, x.shape[0], False
    b, c, s = x.shape
    return b, c, s, s == 1


@torch.library.custom_op("permsym::orthopoly_forward", mutates_args=())
def native_forward(x: torch.Tensor, a: torch.Tensor, key: str) -> torch.Tensor:
    """$y = \\sum_k a_k u_k(s(x))$; ``a``: ``(K, C)`` per unit or ``(K,)`` shared, in ``x``'s dtype."""
    _check_inputs(x, a, x, a.shape[0], key)
    b, c, s, rows = _dims(x)
    y = torch.empty_like(x)
    if x.numel():
        kernel = _kernel("forward", _recurrence(key), a.shape[0], x.dtype, rows)
        kernel(x, a.contiguous(), y, b, c, s, torch.get_num_threads())
    return y


def _check_inputs(x: torch.Tensor, coeffs: torch.Tensor, g: torch.Tensor, size: int, key: str) -> None:
    """The kernels read raw memory: contiguous inputs of one dtype in the canonical shapes,
    ``size`` coefficients as the recurrence ``key`` has (``coeffs`` may hold fewer: the
    derivative's last one is zero and never read)."""
    torch._check(x.dim() in (1, 3) and x.is_contiguous() and g.is_contiguous(), lambda: "poly_native: x and g must be contiguous (N,) or (B, C, S)")
    torch._check(g.shape == x.shape, lambda: f"poly_native: g has shape {tuple(g.shape)}, x {tuple(x.shape)}")
    torch._check(coeffs.dtype == x.dtype == g.dtype, lambda: "poly_native: coefficients, x and g must share a dtype")
    shape = (coeffs.shape[0],) if x.dim() == 1 else (coeffs.shape[0], x.shape[1])
    torch._check(tuple(coeffs.shape) == shape, lambda: f"poly_native: coefficients must be (K,) for a 1-d x, (K, C) for (B, C, S); got {tuple(coeffs.shape)}")
    steps = len(_recurrence(key).steps)
    torch._check(size == steps + 2 or (size == 1 and steps == 0), lambda: f"poly_native: size {size} does not match the recurrence ({steps + 2} coefficients)")
    torch._check(coeffs.shape[0] >= max(size - 1, 1), lambda: f"poly_native: {coeffs.shape[0]} coefficients for size {size}")


@native_forward.register_fake
def _(x, a, key):
    return torch.empty_like(x)


@torch.library.custom_op("permsym::orthopoly_backward", mutates_args=())
def native_backward(
    x: torch.Tensor, g: torch.Tensor, e: torch.Tensor, size: int, key: str, need_x: bool, need_a: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, ga)``: ``grad_x`` (empty unless ``need_x``) and ``ga`` = $\\sum g\\,u_k$,
    float64 ``(size, C)`` (zeros unless ``need_a``); ``e``: derivative coefficients."""
    _check_inputs(x, e, g, size, key)
    b, c, s, rows = _dims(x)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    ga = torch.zeros((size, c), dtype=torch.float64, device=x.device)
    if x.numel() and (need_x or need_a):
        kernel = _kernel("backward", _recurrence(key), size, x.dtype, rows, need_x, need_a)
        kernel(x, g, e.contiguous(), grad_x, ga, b, c, s, torch.get_num_threads())
    return grad_x, ga


@native_backward.register_fake
def _(x, g, e, size, key, need_x, need_a):
    c = 1 if x.dim() == 1 else x.shape[1]
    return (torch.empty_like(x) if need_x else x.new_empty(0)), x.new_empty((size, c), dtype=torch.float64)
