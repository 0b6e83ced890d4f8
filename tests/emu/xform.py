#!/usr/bin/env python3
"""xform.py: the launch transform of the CUDA emulation (tests/emu/README.md).

    python3 tests/emu/xform.py gpu/cuda_x.cu > build-emu/emu/cuda_x.cpp

Two mechanical rewrites, nothing else, line numbers kept (a #line directive
points warnings and sanitizer reports at the .cu file):
  kernel<<<grid, block[, smem[, stream]]>>>(args);
      -> emu_launch("kernel", dim3(grid), dim3(block), (size_t)(smem),
                    emu_bind(kernel)(args));
  extern __shared__ [__align__(n)] T name[];
      -> T *name = (T *)emu_dyn_smem();
and the #include <cuda_runtime.h> that nvcc adds implicitly."""
import re
import sys


def split_top(text):
    """Split at commas outside parentheses, brackets and braces."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
            continue
        cur += ch
    parts.append(cur)
    return parts


def closing_paren(src, i):
    """Index of the parenthesis closing the one at src[i]."""
    depth = 0
    for j in range(i, len(src)):
        if src[j] == '(':
            depth += 1
        elif src[j] == ')':
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit('xform.py: unbalanced parentheses after a launch')


LAUNCH = re.compile(r'([A-Za-z_][\w:]*(?:\s*<[^<>;()]*>)?)\s*<<<')


def transform(src, name):
    out, pos = [], 0
    while True:
        m = LAUNCH.search(src, pos)
        if not m:
            out.append(src[pos:])
            break
        kernel = m.group(1)
        cfg_end = src.find('>>>', m.end())
        if cfg_end < 0:
            raise SystemExit('%s: <<< without >>>' % name)
        cfg = split_top(src[m.end():cfg_end])
        if not 2 <= len(cfg) <= 4:
            raise SystemExit('%s: a launch configuration of %d parts' % (name, len(cfg)))
        open_i = cfg_end + 3
        while src[open_i].isspace():
            open_i += 1
        if src[open_i] != '(':
            raise SystemExit('%s: no argument list after >>>' % name)
        close_i = closing_paren(src, open_i)
        args = src[open_i + 1:close_i]
        smem = cfg[2].strip() if len(cfg) > 2 else '0'
        # newlines inside the configuration go after the call, so lines keep their numbers
        lost = src[m.start():open_i].count('\n')
        flat = [' '.join(c.split()) for c in cfg]
        out.append(src[pos:m.start()])
        out.append('emu_launch("%s", dim3(%s), dim3(%s), (size_t)(%s), emu_bind(%s)(%s)' %
                   (' '.join(kernel.split()), flat[0], flat[1], ' '.join(smem.split()), kernel, args))
        out.append(')' + '\n' * lost)
        pos = close_i + 1
    src = ''.join(out)
    src = re.sub(r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*)\s+(\w+)\s*\[\s*\]\s*;',
                 r'\1 *\2 = (\1 *)emu_dyn_smem();', src)
    if '<<<' in src:
        raise SystemExit('%s: a launch the transform did not understand' % name)
    return '#include <cuda_runtime.h>\n#line 1 "%s"\n' % name + src


def main():
    if len(sys.argv) != 2:
        sys.stderr.write('usage: xform.py FILE.cu > FILE.cpp\n')
        return 64
    path = sys.argv[1]
    with open(path) as f:
        sys.stdout.write(transform(f.read(), path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
