/* dist.c: dist.h over MPI. */
#include "dist.h"
#include "util.h"

#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>

static int rank, world = 1;
static bool joined;      /* MPI_Init done, MPI_Finalize not yet */

/* The size of the job as the launcher announced it, 0 when not launched. */
static long launched_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        long n = v ? strtol(v, NULL, 10) : 0;
        /* a one-task srun step is no MPI job; a one-process mpirun is */
        if (n > (i == 3 ? 1 : 0))
            return n;
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

/* A rank that exits before dist_finalize takes the job down with it:
 * with a nonzero status (a failure) at once; with 0 it leaves properly. */
static void on_process_exit(int status, void *arg)
{
    (void)arg;
    if (!joined)
        return;
    if (status != 0)
        MPI_Abort(MPI_COMM_WORLD, status);
    dist_finalize();
}

void dist_init(int *argc, char ***argv)
{
    long announced = launched_size();
    if (announced == 0)
        return;
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        upc_fail(EX_UNAVAILABLE, "MPI_Init failed (launched as one of %ld processes)", announced);
    joined = true;
    on_exit(on_process_exit, NULL);
    /* errors return to us, so they end the job through upc_fail and MPI_Abort */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world != announced)
        upc_fail(EX_UNAVAILABLE,
                 "the launcher started %ld processes but MPI sees %d (under srun, give --mpi=pmix or pmi2)",
                 announced, world);
}

int dist_rank(void)
{
    return rank;
}

int dist_world(void)
{
    return world;
}

bool dist_is_root(void)
{
    return rank == 0;
}

bool dist_joined(void)
{
    return joined;
}

static void check(int rc, const char *what)
{
    if (rc == MPI_SUCCESS)
        return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    upc_fail(EX_SOFTWARE, "rank %d: %s failed: %.*s", rank, what, len, msg);
}

/* MPI counts are int: long buffers go in pieces. */
#define PIECE ((size_t)INT_MAX / 8 * 8)

void dist_allreduce_sum(void *buf, size_t n, dist_type t)
{
    if (world == 1)
        return;
    MPI_Datatype mt = t == DIST_F32 ? MPI_FLOAT : t == DIST_F64 ? MPI_DOUBLE : MPI_INT64_T;
    size_t size = t == DIST_F32 ? 4 : 8;
    for (size_t off = 0; off < n; off += PIECE) {
        size_t k = n - off < PIECE ? n - off : PIECE;
        check(MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * size, (int)k, mt, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
    }
}

void dist_allreduce_max(double *buf, size_t n)
{
    if (world == 1)
        return;
    check(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
}

void dist_broadcast(void *buf, size_t n, int root)
{
    if (world == 1)
        return;
    for (size_t off = 0; off < n; off += PIECE) {
        size_t k = n - off < PIECE ? n - off : PIECE;
        check(MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
}

void dist_barrier(void)
{
    if (world == 1)
        return;
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void dist_finalize(void)
{
    if (!joined)
        return;
    joined = false;
    MPI_Finalize();
}

void dist_abort(int code)
{
    if (joined)
        MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}
