/* chatserv._fanout: one frame written to many sockets in one call.
 *
 * The compiled form of chatserv.fanout._send_all; the contract is in the
 * docstring of chatserv/fanout.py. Per socket: one byte read from `held`
 * and one send(); nothing is allocated except for the sockets that did not
 * take the whole frame. The descriptors are read first, so that the send()
 * loop runs without the GIL (the storage thread may commit meanwhile).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* Outcome of one socket, while the GIL is released: bytes taken, -errno. */
typedef struct {
    int fd;
    int missed;
    Py_ssize_t sent;
} slot;

static PyObject *
send_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_all(fds, data, held) takes 3 arguments");
        return NULL;
    }
    PyObject *fds = args[0];
    if (!PyList_Check(fds)) {
        PyErr_SetString(PyExc_TypeError, "send_all: fds must be a list of ints");
        return NULL;
    }
    Py_buffer data, held;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    /* An exported buffer cannot be resized meanwhile (a bytearray refuses). */
    if (PyObject_GetBuffer(args[2], &held, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *missed = NULL;
    Py_ssize_t n = PyList_GET_SIZE(fds);
    slot *slots = PyMem_Malloc((n ? n : 1) * sizeof(slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(fds, i));
        if (fd == -1 && PyErr_Occurred())
            goto done;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "send_all: bad file descriptor %ld", fd);
            goto done;
        }
        slots[i].fd = (int)fd;
    }

    const char *buf = data.buf;
    size_t len = (size_t)data.len;
    const unsigned char *flags = held.buf;
    Py_ssize_t limit = held.len;
    Py_ssize_t short_count = 0;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int fd = slots[i].fd;
        slots[i].missed = 1;
        if (fd >= limit || flags[fd]) {
            slots[i].sent = 0;
            short_count++;
            continue;
        }
        ssize_t sent;
        do {
            sent = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            slots[i].sent = (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -(Py_ssize_t)errno;
            short_count++;
        }
        else {
            slots[i].sent = (Py_ssize_t)sent;
            if ((size_t)sent == len)
                slots[i].missed = 0;
            else
                short_count++;
        }
    }
    Py_END_ALLOW_THREADS

    missed = PyList_New(short_count);
    if (missed == NULL)
        goto done;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n && k < short_count; i++) {
        if (!slots[i].missed)
            continue;
        PyObject *item = Py_BuildValue("(nn)", i, slots[i].sent);
        if (item == NULL) {
            Py_CLEAR(missed);
            goto done;
        }
        PyList_SET_ITEM(missed, k++, item);
    }

done:
    PyMem_Free(slots);
    PyBuffer_Release(&held);
    PyBuffer_Release(&data);
    return missed;
}

static PyMethodDef methods[] = {
    {"send_all", (PyCFunction)(void (*)(void))send_all, METH_FASTCALL,
     "send_all(fds, data, held) -> [(i, n), ...]\n\n"
     "Send data to every fds[i] not held (held[fd] zero) with one non-blocking\n"
     "send(); return (i, n) for each socket that did not take it all: n bytes\n"
     "taken (0: held or would block), or n = -errno. See chatserv.fanout."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chatserv._fanout",
    "The compiled fan-out write loop (see chatserv.fanout).", -1, methods,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    return PyModule_Create(&module);
}
