/*
 * A minimal parallel for over an index range, with POSIX threads, for loops
 * that run without the GIL. The caller picks the thread count (the Python side
 * passes torch.get_num_threads(), so torch.set_num_threads and DataLoader
 * workers, which torch limits to one thread, are respected).
 */
#include "example_module.h"

#include <pthread.h>

#define EP_MAX_THREADS 64

typedef struct {
    ep_range_function function;
    void *context;
    int64_t begin;
    int64_t end;
} range_task;

static void *run_task(void *argument)
{
    range_task *task = argument;
    task->function(task->context, task->begin, task->end);
    return NULL;
}

void ep_parallel_for(int64_t n, int64_t min_per_thread, int threads, ep_range_function function, void *context)
{
    int64_t by_size = min_per_thread > 0 ? n / min_per_thread : n;
    int count = threads < 1 ? 1 : threads > EP_MAX_THREADS ? EP_MAX_THREADS : threads;
    if (by_size < count) {
        count = by_size < 1 ? 1 : (int)by_size;
    }
    range_task tasks[EP_MAX_THREADS];
    pthread_t handles[EP_MAX_THREADS];
    int started[EP_MAX_THREADS] = {0};
    for (int t = 0; t < count; t++) {
        tasks[t] = (range_task){function, context, n * t / count, n * (t + 1) / count};
    }
    /* Task 0 runs on the calling thread; a thread that cannot be started runs inline too. */
    for (int t = 1; t < count; t++) {
        started[t] = pthread_create(&handles[t], NULL, run_task, &tasks[t]) == 0;
    }
    run_task(&tasks[0]);
    for (int t = 1; t < count; t++) {
        if (started[t]) {
            pthread_join(handles[t], NULL);
        } else {
            run_task(&tasks[t]);
        }
    }
}
