"""The pipeline's machinery: how a stage runs (`stage`), on what (`runtime`, `ddp`,
`dask_cluster`) and with which kernels (`kernels`).

May import: imgrec's root modules (config, errors, files). Imported by every other sub-
package; imports none of them.
"""
