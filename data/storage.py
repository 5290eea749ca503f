"""Every user path through one abstraction: local files and `gs://` / `s3://` buckets alike.

Paths stay strings in configs and messages; this module turns them into `etils.epath.Path` (what
orbax already uses; without TensorFlow it reaches buckets through gcsfs / s3fs) and adds what a
bucket lacks or names differently: an object's version stamp, byte-range reads from an open
handle, whole-object atomic writes, and one-line errors for a missing bucket or bad credentials.
A local path behaves as it always has. No code outside this module calls `os.path`/`open` on a
user path.
"""

import concurrent.futures
import glob as globlib
import os
import re
import time
from typing import IO

import fsspec
from etils import epath

from data.errors import ConfigError

BUCKET_SCHEMES = ('gs', 's3')
_URL = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')

# No listings cache in any gcsfs/s3fs client (epath's and orbax's included): other processes add
# and delete objects (a trainer's checkpoints, keep-N), and a cached listing would hide them from a
# job that polls for hours. Defaults for every client created after this import.
for _protocol in BUCKET_SCHEMES:
  fsspec.config.conf.setdefault(_protocol, {}).setdefault('use_listings_cache', False)


def scheme(path: str | os.PathLike) -> str:
  """'gs', 's3', another URL scheme, or '' for a local path."""
  match = _URL.match(os.fspath(path))
  return match.group(1).lower() if match else ''


def is_bucket(path: str | os.PathLike) -> bool:
  """Whether the path names an object store (gs:// or s3://)."""
  return scheme(path) in BUCKET_SCHEMES


def as_path(path: str | os.PathLike) -> epath.Path:
  """The epath.Path for a local path or a bucket URL; other URL schemes are a ConfigError."""
  found = scheme(path)
  if found and found not in BUCKET_SCHEMES:
    raise ConfigError(f'{os.fspath(path)}: unsupported storage scheme {found}:// (use a local '
                      'path, gs:// or s3://)')
  return epath.Path(path)


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute (as the process sees it now); a bucket URL unchanged."""
  path = os.fspath(path)
  return path.rstrip('/') if is_bucket(path) else os.path.abspath(path)


def join(base: str | os.PathLike, *parts: str) -> str:
  """base/part/...: `/`-joined for buckets, os.path.join locally."""
  base = os.fspath(base)
  if is_bucket(base):
    return '/'.join([base.rstrip('/'), *(p.strip('/') for p in parts)])
  return os.path.join(base, *parts)


def resolve(base: str, path: str) -> str:
  """`path` relative to the folder `base` unless it is absolute or a URL."""
  if scheme(path) or os.path.isabs(path):
    return path
  return join(base, path)


def parent(path: str) -> str:
  """The folder holding `path` (`gs://b/x/y` -> `gs://b/x`)."""
  return str(as_path(path).parent) if is_bucket(path) else os.path.dirname(path)


def basename(path: str) -> str:
  """The last part of the path, ignoring a trailing slash."""
  return os.fspath(path).rstrip('/').rsplit('/', 1)[-1] if is_bucket(path) else os.path.basename(
      os.path.normpath(path))


def exists(path: str) -> bool:
  """Whether a file or folder (or, in a bucket, an object or prefix) exists."""
  return as_path(path).exists()


def is_file(path: str) -> bool:
  """Whether the path is a file (an object, in a bucket)."""
  return as_path(path).is_file()


def is_dir(path: str) -> bool:
  """Whether the path is a folder (a prefix with objects under it, in a bucket)."""
  return as_path(path).is_dir()


def listdir(path: str) -> list[str]:
  """Sorted names directly under a folder."""
  return sorted(child.name for child in as_path(path).iterdir())


def makedirs(path: str) -> None:
  """Creates the folder and its parents (a no-op in a bucket, where folders are prefixes)."""
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path: str) -> bytes:
  """The whole file."""
  return as_path(path).read_bytes()


def read_text(path: str, errors: str = 'strict') -> str:
  """The whole file as UTF-8 text."""
  return read_bytes(path).decode('utf-8', errors=errors)


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole file atomically: readers see the old content or the new, never a part.

  A bucket object appears only when its upload completes; locally a temporary file is renamed
  into place.
  """
  if is_bucket(path):
    as_path(path).write_bytes(data)
    return
  makedirs(os.path.dirname(path) or '.')
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'wb') as f:
    f.write(data)
  os.replace(temporary, path)


def write_text(path: str, text: str) -> None:
  """Writes UTF-8 text atomically (see write_bytes)."""
  write_bytes(path, text.encode('utf-8'))


def remove(path: str) -> None:
  """Deletes a file; a missing one is not an error."""
  try:
    as_path(path).unlink()
  except FileNotFoundError:
    pass


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
  """The fsspec filesystem serving the path, and the path in its terms."""
  as_path(path)  # refuses unknown schemes with a ConfigError
  return fsspec.core.url_to_fs(path)


def open_reader(path: str, sequential: bool = False) -> IO[bytes]:
  """A seekable binary handle; in a bucket each read is a ranged GET, not a whole download.

  Callers keep it open and read members by offset, so a record costs one request, not an open.
  `sequential=True` (a scan front to back, e.g. indexing a tar) reads ahead in large blocks
  instead, so walking many small members costs a few requests.
  """
  if not is_bucket(path):
    return open(path, 'rb')
  fs, inner = filesystem(path)
  if sequential:
    return fs.open(inner, 'rb', block_size=8 << 20, cache_type='readahead')
  # Reads are random (shuffled records): readahead would fetch bytes no record asks for.
  return fs.open(inner, 'rb', block_size=1 << 20, cache_type='none')


def read_many(paths: list[str], workers: int = 16) -> list[bytes | None]:
  """The whole content of each path, None where it cannot be read.

  A bucket's objects come in concurrent batches of the client's async requests (thousands of small
  index files at start-up: seconds, not one round trip after another); local files through a
  thread pool (NFS waits on the network too).
  """
  out: list[bytes | None] = [None] * len(paths)
  groups: dict[int, tuple] = {}
  for k, path in enumerate(paths):
    if is_bucket(path):
      fs, inner = filesystem(path)
      groups.setdefault(id(fs), (fs, []))[1].append((k, fs._strip_protocol(inner)))
  for fs, wanted in groups.values():
    got = fs.cat([inner for _, inner in wanted], on_error='return')
    for k, inner in wanted:
      value = got.get(inner)
      out[k] = value if isinstance(value, bytes) else None

  def local(path: str) -> bytes | None:
    try:
      return read_bytes(path)
    except OSError:
      return None

  todo = [k for k, path in enumerate(paths) if not is_bucket(path)]
  for k, data in zip(todo, map_in_threads(local, [paths[k] for k in todo], workers)):
    out[k] = data
  return out


def map_in_threads(function, items, workers: int) -> list:
  """[function(item)] in order, over a thread pool: for reads, which wait on disk or network."""
  items = list(items)
  if workers <= 1 or len(items) <= 1:
    return [function(item) for item in items]
  with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
    return list(pool.map(function, items))


def read_range(path: str, offset: int, length: int) -> bytes:
  """`length` bytes of a bucket object from `offset`: one ranged GET, no handle and no metadata
  request (a record read from any of thousands of shards costs one request). Local files are read
  through handles kept open (open_reader), which cost a file descriptor, not a round trip."""
  fs, inner = filesystem(path)
  return fs.cat_file(inner, start=offset, end=offset + length)


def glob(pattern: str) -> list[str]:
  """Sorted paths matching `*`, `?` and `[...]`; in a bucket through the client's object listing."""
  if not is_bucket(pattern):
    return sorted(globlib.glob(pattern))
  fs, inner = filesystem(pattern)
  fs.invalidate_cache()  # a listing cached earlier in this process may predate new objects
  return sorted(f'{scheme(pattern)}://{found}' for found in fs.glob(inner))


def version_stamp(path: str) -> list:
  """[size, version]: what changes when the file's content is replaced.

  GCS: the object generation; S3: the ETag; local: the modification time in nanoseconds.
  """
  if not is_bucket(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]
  fs, inner = filesystem(path)
  fs.invalidate_cache(inner)  # else the client may answer from a listing made before a rewrite
  info = fs.info(inner)
  version = info.get('generation') or info.get('ETag') or info.get('etag') or ''
  return [int(info['size']), str(version)]


def version_stamps(paths: list[str]) -> list[list | None]:
  """version_stamp of each path (None where it does not exist), a bucket folder listed once.

  Thousands of shards in a bucket cost a few paginated listings, not one request per object.
  """
  listed: dict[str, dict] = {}
  for folder in sorted({parent(p) for p in paths if is_bucket(p)}):
    fs, inner = filesystem(folder)
    try:
      entries = fs.ls(inner, detail=True)
    except FileNotFoundError:
      continue
    for entry in entries:
      listed[f'{scheme(folder)}://{entry["name"]}'] = entry
  stamps = []
  for path in paths:
    if not is_bucket(path):
      stamps.append(version_stamp(path) if os.path.isfile(path) else None)
      continue
    entry = listed.get(path.rstrip('/'))
    if entry is None or entry.get('type') == 'directory':
      stamps.append(None)
      continue
    version = entry.get('generation') or entry.get('ETag') or entry.get('etag') or ''
    stamps.append([int(entry['size']), str(version)])
  return stamps


def check_reachable(path: str, what: str) -> None:
  """Raises one ConfigError naming the path and the cause when a bucket path cannot be reached.

  Catches a missing bucket, missing or wrong credentials and an unreachable endpoint before any
  compile, instead of a client traceback minutes later.
  """
  if not is_bucket(path):
    return
  bucket = os.fspath(path).split('://', 1)[1].split('/', 1)[0]
  try:
    fs, _ = filesystem(path)
    fs.ls(f'{scheme(path)}://{bucket}', detail=False)
  except FileNotFoundError:
    raise ConfigError(f'{what} {path}: bucket {bucket!r} does not exist '
                      f'(create it first, or check the name)') from None
  except PermissionError as e:
    raise ConfigError(f'{what} {path}: access denied ({first_line(e)}); check the credentials '
                      f'({_credential_hint(path)})') from None
  except Exception as e:  # pylint: disable=broad-except  (clients raise many types)
    raise ConfigError(f'{what} {path}: cannot reach the bucket ({type(e).__name__}: '
                      f'{first_line(e)}; {_credential_hint(path)})') from None


def first_line(error: BaseException) -> str:
  """An error's first message line (its type name when it has no message): client errors carry
  whole retry stories."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _credential_hint(path: str) -> str:
  if scheme(path) == 'gs':
    return ('gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS; '
            'STORAGE_EMULATOR_HOST for an emulator')
  return 'AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE; AWS_ENDPOINT_URL for other S3 hosts'


def append_bytes(path: str, data: bytes) -> None:
  """Adds `data` at the end of the file, creating it (and, locally, its folder) if missing.

  Buckets have no append. On GCS the new bytes go up as a part object that is composed onto the
  end server-side, so each call uploads only `data`, not the whole file; on S3 (no compose) the
  object is read and rewritten. One writer per file: callers are process 0.
  """
  if not is_bucket(path):
    makedirs(os.path.dirname(path) or '.')
    with open(path, 'ab') as f:
      f.write(data)
    return
  fs, inner = filesystem(path)
  fs.invalidate_cache(inner)
  if not fs.exists(inner):
    write_bytes(path, data)
  elif scheme(path) == 'gs':
    part = f'{inner}.part-{os.getpid()}-{time.monotonic_ns()}'
    fs.pipe_file(part, data)
    try:
      fs.merge(inner, [inner, part])
    finally:
      fs.rm_file(part)
  else:
    write_bytes(path, read_bytes(path) + data)


def refresh(path: str) -> None:
  """Forgets the bucket client's cached listings, so the next exists/is_dir/listdir sees objects
  that other writers (orbax's tensorstore, other processes) made meanwhile. A no-op locally."""
  if not is_bucket(path):
    return
  filesystem(path)[0].invalidate_cache()
  backend = getattr(as_path(path), '_backend', None)  # epath keeps an fsspec instance of its own
  if hasattr(backend, 'fs'):
    backend.fs(os.fspath(path)).invalidate_cache()
