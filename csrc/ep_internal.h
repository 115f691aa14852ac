/*
 * EP_INTERNAL: the mark of every non-static symbol of the extension, all of which are named ep_*
 * (the init function PyInit_<name> excepted, which CPython looks up by name).
 *
 * It keeps them out of the shared object's dynamic symbol table, so two extensions built from copies
 * of this code never resolve each other's functions. Shared by the C files and the CUDA file.
 */
#ifndef EP_INTERNAL_H
#define EP_INTERNAL_H

#if defined(__GNUC__) || defined(__clang__)
#define EP_INTERNAL __attribute__((visibility("hidden")))
#else
#define EP_INTERNAL
#endif

#endif /* EP_INTERNAL_H */
