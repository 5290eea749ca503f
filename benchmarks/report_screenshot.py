"""A PNG screenshot of an eval.report page, rendered by a headless Chromium.

  python benchmarks/report_screenshot.py RUN/report/index.html /tmp/report.png [--width 1400]

Needs a headless Chromium on PATH: Debian's `apt-get install chromium-headless-shell` (checked
with 156.0.8078), or `chromium`/`google-chrome`. The page is self-contained, so the browser reads
nothing but the file. The height is the page's: Chromium's --screenshot takes the window size, so
the page is first measured (--dump-dom is not enough: images set the height), then shot.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ('chromium-headless-shell', 'chromium', 'chromium-browser', 'google-chrome')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
         '--force-device-scale-factor=1')


def browser() -> str:
  """The first headless-capable Chromium found on PATH."""
  for name in BROWSERS:
    found = shutil.which(name)
    if found:
      return found
  sys.exit(f'error: no Chromium on PATH (tried {", ".join(BROWSERS)}); '
           'apt-get install chromium-headless-shell')


def page_height(chrome: str, page: str, width: int) -> int:
  """The rendered page's height in CSS pixels (a tiny page that loads it in an iframe
  would need a server; a script in a copy of the page writes it into the DOM instead)."""
  with open(page, encoding='utf-8') as f:
    text = f.read()
  probe = text.replace('</body>', '<script>window.onload = () => { document.title = '
                       '"height=" + document.documentElement.scrollHeight; };</script></body>')
  with tempfile.NamedTemporaryFile('w', suffix='.html', delete=False, encoding='utf-8') as f:
    f.write(probe)
  try:
    dom = subprocess.run([chrome, *FLAGS, f'--window-size={width},1000',
                          '--virtual-time-budget=5000', '--dump-dom', f'file://{f.name}'],
                         capture_output=True, text=True, timeout=120, check=True).stdout
  finally:
    os.unlink(f.name)
  start = dom.index('<title>height=') + len('<title>height=')
  return int(dom[start:dom.index('</title>', start)])


def main(argv: list[str]) -> int:
  """Measures the page, then writes the screenshot."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('page', help='an eval.report index.html (a local file)')
  parser.add_argument('png', help='the screenshot to write')
  parser.add_argument('--width', type=int, default=1400)
  args = parser.parse_args(argv)
  chrome, page = browser(), os.path.abspath(args.page)
  height = page_height(chrome, page, args.width)
  subprocess.run([chrome, *FLAGS, f'--window-size={args.width},{height}',
                  f'--screenshot={os.path.abspath(args.png)}', f'file://{page}'],
                 capture_output=True, timeout=120, check=True)
  print(f'{args.png}: {args.width}x{height} screenshot of {args.page}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
