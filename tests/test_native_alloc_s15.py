"""The C fallback's verdicts do not depend on memory (review s15): a failed allocation of the batch
equation's scratch made ed25519_verify_all call 16 valid signatures invalid, with no error. Every
allocation the C fallback makes in a call is failed in turn (an LD_PRELOAD shim that refuses one
size of malloc from _native); each call must then give the true verdict or raise, never another."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>
extern void *__libc_malloc(size_t);
static size_t fail_size, seen[512];
static int logging, nseen;
void avfail_set(size_t n) { fail_size = n; }
void avfail_log(int on) { logging = on; if (on) nseen = 0; }
int avfail_seen(size_t *out, int cap) {
    int n = nseen < cap ? nseen : cap;
    memcpy(out, seen, n * sizeof(size_t));
    return n;
}
static int from_native(void *caller) {
    Dl_info info;
    return dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "_native");
}
void *malloc(size_t n) {
    if ((logging || (fail_size && n == fail_size)) && from_native(__builtin_return_address(0))) {
        if (!logging) return NULL;
        int k = 0;
        while (k < nseen && seen[k] != n) k++;
        if (k == nseen && nseen < 512) seen[nseen++] = n;
    }
    return __libc_malloc(n);
}
"""

CHILD = textwrap.dedent("""
    import ctypes, sys
    import accel
    from accel.backends import KernelError
    from nacl.signing import SigningKey

    shim = ctypes.CDLL(sys.argv[1])
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(40)]
    msgs = [b"block %d" % i for i in range(40)]
    pks = [bytes(k.verify_key) for k in keys]
    sigs = [k.sign(m).signature for k, m in zip(keys, msgs)]
    bad = list(sigs)
    bad[7] = bytes([bad[7][0] ^ 1]) + bad[7][1:]
    cases = [(n, s) for n in (16, 40) for s in (sigs, bad)]

    def calls():
        for n, s in cases:
            truth = [j != 7 or s is sigs for j in range(n)]
            yield (lambda n=n, s=s: list(accel.ed25519_verify_batch(pks[:n], msgs[:n], s[:n], backend="cpu")), truth)
            yield (lambda n=n, s=s: bool(accel.ed25519_verify_all(pks[:n], msgs[:n], s[:n], backend="cpu")), all(truth))

    shim.avfail_log(1)
    for call, truth in calls():
        assert call() == truth
    shim.avfail_log(0)
    sizes = (ctypes.c_size_t * 512)()
    sizes = sorted(sizes[:shim.avfail_seen(sizes, 512)])
    assert len(sizes) >= 5, sizes  # (items, sel and the batch equation's five buffers)
    wrong = []
    for size in sizes:
        shim.avfail_set(size)
        for k, (call, truth) in enumerate(calls()):
            try:
                got = call()
            except KernelError:
                continue  # a clear error: the caller loses nothing
            if got != truth:
                wrong.append((size, k, got))
    shim.avfail_set(0)
    assert not wrong, f"verdicts changed by a failed allocation (size, call, verdict): {wrong}"
    print("sizes failed in turn:", sizes)
""")


def test_no_verdict_of_the_c_fallback_depends_on_an_allocation(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the allocation shim is an LD_PRELOAD library (Linux)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the allocation shim")
    (tmp_path / "shim.c").write_text(SHIM)
    shim = tmp_path / "shim.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "shim.c"), "-ldl"], check=True)
    (tmp_path / "child.py").write_text(CHILD)
    env = dict(os.environ, LD_PRELOAD=str(shim), ACCEL_THREADS="1")
    out = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(shim)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sizes failed in turn" in out.stdout
