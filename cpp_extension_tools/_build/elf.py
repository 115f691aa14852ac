"""A check of a linked binary before it is published: a whole ELF shared object with the expected entry point.

``dlopen`` of an ELF whose segments reach past the end of the file (a link cut
short by a full disk, a truncated copy) can kill the process with SIGBUS
instead of failing; a binary without ``PyInit_<name>`` fails only at import,
with a message that does not say what to define. Both are found here, before
anything is published.
"""

from __future__ import annotations

import struct

__all__ = ["elf_problem"]

_ELF_MAGIC = b"\x7fELF"
_ET_EXEC = 2
_ET_DYN = 3
_PT_LOAD = 1
_SHT_DYNSYM = 11


def elf_problem(path: str, entry_point: str | None, executable: bool = False) -> str | None:
    """Why ``path`` is not a usable shared object (defining ``entry_point``, when given), or None.

    ``executable``: ``path`` is a linked program (a position-independent one is ELF type "shared" too).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    try:
        return _problem(data, entry_point, executable)
    except struct.error:
        return "its ELF tables are cut short"


def _problem(data: bytes, entry_point: str | None, executable: bool) -> str | None:
    if len(data) < 64 or data[:4] != _ELF_MAGIC:
        return "it is not an ELF file"
    if data[4] != 2:
        return "it is not a 64-bit ELF file"
    endian = "<" if data[5] == 1 else ">"
    e_type = struct.unpack_from(endian + "H", data, 16)[0]
    if e_type != _ET_DYN and not (executable and e_type == _ET_EXEC):
        return f"it is not {'an executable' if executable else 'a shared object'} (ELF type {e_type})"
    e_phoff, e_shoff = struct.unpack_from(endian + "QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from(endian + "HHHH", data, 54)
    if e_phoff + e_phnum * e_phentsize > len(data) or e_shoff + e_shnum * e_shentsize > len(data):
        return "its ELF header points past the end of the file (truncated)"
    for index in range(e_phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(endian + "IIQQQQ", data, e_phoff + index * e_phentsize)
        if p_type == _PT_LOAD and p_offset + p_filesz > len(data):
            return "a loadable segment lies past the end of the file (truncated)"
    if entry_point is not None and not _defines(data, endian, e_shoff, e_shentsize, e_shnum, entry_point):
        return f"it does not define {entry_point}"
    return None


def _defines(data: bytes, endian: str, e_shoff: int, e_shentsize: int, e_shnum: int, symbol: str) -> bool:
    """Whether the dynamic symbol table defines ``symbol`` (a defined, exported symbol)."""
    wanted = symbol.encode()
    sections = [struct.unpack_from(endian + "IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != _SHT_DYNSYM or not entsize or link >= len(sections):
            continue
        strings_offset, strings_size = sections[link][4], sections[link][5]
        strings = data[strings_offset:strings_offset + strings_size]
        for start in range(offset, offset + size - entsize + 1, entsize):
            st_name, _, _, st_shndx = struct.unpack_from(endian + "IBBH", data, start)
            end = strings.find(b"\0", st_name)
            if st_shndx != 0 and strings[st_name:end] == wanted:
                return True
    return False
