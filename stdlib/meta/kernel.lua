---@meta kernel
-- Type stubs for the native `kernel` module (`local kernel = require("kernel")`), for
-- lua-language-server. The real module is built into cellsci; this file only describes it. Requiring
-- it (as `meta.kernel`) returns a table of empty functions and never replaces the real module.

---Jupyter kernels as handles (`k`); execution results as plain tables. An exception in a cell, a
---timeout or a dead kernel is not a failure of the call: `k:execute` returns a result whose `status`
---says what happened. No kernel outlives cellsci.
---@class cellsci.kernel
local kernel = {}

---A kernelspec found on this machine (`kernel.specs()`).
---@class cellsci.kernel.Spec
---@field name string The kernelspec name, e.g. `"python3"`.
---@field display_name string
---@field language string
---@field argv string[] The command line, with `{connection_file}`.
---@field resource_dir? string The spec's folder (absent for a spec made for an interpreter).
---@field interrupt_mode "signal"|"message"
---@field env table<string, string> Variables the spec adds.

---Every kernelspec found, the way Jupyter finds them (`$JUPYTER_PATH`, the Python environments in
---play, the user data dir, the system dirs); with a gateway (`{gateway = URL}`, else the config's
---`exec.gateway_url`), the gateway's kernelspecs (`{name, display_name, language, argv, gateway}`).
---@param opts? {gateway?: string|false}
---@return cellsci.kernel.Spec[]|nil specs
---@return cellsci.kernel.Error|nil err For a gateway: `kind = "auth"`, `"server"`, `"connect"`, `"timeout"`, ...
function kernel.specs(opts) end

---Options of `kernel.start`. Any other key raises.
---@class cellsci.kernel.StartOpts
---@field name? string The kernelspec. Default: the config's `exec.kernel_name`, else `"python3"`. Giving it drops the config's `exec.python`.
---@field python? string Run this interpreter's ipykernel instead of a kernelspec; wins over `name` when both are given. Default: the config's `exec.python` (none).
---@field packages? string[]|string Provision (once, cached) a venv with ipykernel and these pip requirements, and run it. Default: the config's `exec.kernel_packages` (`{}`).
---@field cwd? string The kernel's working directory. Default: cellsci's current folder.
---@field env? table<string, string|number|boolean> Added to the inherited environment and the spec's env (`true`/`false` become `"1"`/`"0"`). Default: none.
---@field startup_timeout? number Seconds to wait for the kernel to be ready. Default: `60`.
---@field interrupt_grace? number Seconds a timed-out cell gets after the interrupt before the kernel is killed and restarted. Default: `3`.
---@field gateway? string|false Start the kernel on this Jupyter Kernel Gateway / Enterprise Gateway (`http(s)://host:port`; the token comes from the config's `exec.gateway_token` or `CELLSCI_GATEWAY_TOKEN`); `false`: on this machine. Default: the config's `exec.gateway_url`, else this machine.
---@field transport? "ipc"|"tcp" How cellsci talks to the kernel: `"ipc"`, Unix sockets in the kernel's private (0700) folder, or `"tcp"`, ports on 127.0.0.1 that every local user can reach (for kernels that cannot do IPC). Default: the config's `exec.transport`, else `"ipc"`.

---@alias cellsci.kernel.ErrorKind
---| "start"       # the kernel could not start (the message includes the kernel's own output)
---| "interrupted" # Ctrl-C / SIGTERM
---| "kernel"      # a protocol failure while executing or interrupting
---| "auth"        # a gateway refused the token
---| "server"      # a gateway answered 5xx (or is at its kernel limit)
---| "connect"     # a gateway could not be reached
---| "timeout"     # a gateway did not answer in time
---| "reset"       # a gateway connection broke
---| "client"      # a gateway refused the request otherwise
---| "no_such_kernel" # the gateway has no kernelspec of that name (Enterprise Gateway: a 500 with NoSuchKernel)
---| "unauthorized" # Enterprise Gateway refuses the user (`exec.gateway_username`; root by default)
---| "launch_timeout" # Enterprise Gateway: the kernel did not report back within KERNEL_LAUNCH_TIMEOUT (the start timeout)
---| "config"      # a bad gateway URL, or a gateway kernel that cannot see its working folder

---The error of a kernel call.
---@class cellsci.kernel.Error: cellsci.Error
---@field kind cellsci.kernel.ErrorKind
---@field result? cellsci.kernel.Result After Ctrl-C in `k:execute`: the cell's result so far (its outputs, `ename = "KeyboardInterrupt"`), so they can still be saved.

---Start a kernel. Raises on a wrong option: `kernel.start: option 'cwd': expected a string, got table`
---with the script's file:line.
---@param opts? cellsci.kernel.StartOpts
---@return cellsci.kernel.Kernel|nil k
---@return cellsci.kernel.Error|nil err `kind = "start"` or `"interrupted"`.
function kernel.start(opts) end

---Options of `kernel.pool`: every option of `kernel.start` (for every kernel of the pool), and these.
---@class cellsci.kernel.PoolOpts: cellsci.kernel.StartOpts
---@field size? integer Number of kernels (slots). Default: the number of `gpus`, else `1`.
---@field local_slots? integer With a gateway: the first n slots start their kernels on this machine. Default: the config's `exec.local_slots`, else `0`.
---@field hosts? string[] Enterprise Gateway: the remote hosts to spread the gateway slots over, each start pinned to the next one in turn that is not avoided (`KERNEL_REMOTE_HOST`). Default: the config's `exec.gateway_hosts`, else none (EG places the kernels).
---@field gpus? integer[] Slot i's kernel gets `CUDA_VISIBLE_DEVICES=<gpus[i]>` (inside it, that GPU is `cuda:0`); more slots than GPUs share them in turn. `{}` for none. Default: the config's `exec.gpus`, else none (kernels inherit the environment).

---A pool of kernels started ahead, in the background and concurrently, so a branch with a free slot
---never waits on a start-up. Raises on a wrong option. The kernels start after this returns.
---@param opts? cellsci.kernel.PoolOpts
---@return cellsci.kernel.Pool|nil pool
---@return cellsci.kernel.Error|nil err `kind = "start"` (no kernelspec or interpreter to start).
function kernel.pool(opts) end

---A pool of kernels (`kernel.pool{}`); `tostring(pool)` says how many are ready.
---@class cellsci.kernel.Pool
local Pool = {}

---A live kernel of the pool, waiting (while other branches run on) until one is free. A kernel found
---dead is restarted and another is handed out. Raises after `pool:shutdown()`.
---@return cellsci.kernel.Kernel|nil k
---@return cellsci.kernel.Error|nil err `kind = "start"` (every kernel of the pool failed to start; they are tried again on the next call) or `"interrupted"` (Ctrl-C).
function Pool:acquire() end

---Give a kernel back. It is killed and started fresh in the background (a new process: no variables,
---modules, threads or GPU memory of the previous user), so this returns at once. `k` can no longer be
---used. A kernel handle collected without `release` goes back too. Raises for a kernel of another pool,
---of `kernel.start`, or one given back already.
---@param k cellsci.kernel.Kernel
---@return true
function Pool:release(k) end

---Acquire a kernel, call `fn(k)`, and give the kernel back however `fn` ends (an error in `fn` is
---raised again after the release). Returns `fn`'s results, or `nil, err` when no kernel could be had.
---@generic R
---@param fn fun(k: cellsci.kernel.Kernel): R
---@return R|nil
---@return cellsci.kernel.Error|nil err As for `pool:acquire()`.
function Pool:with(fn) end

---Number of slots.
---@return integer
function Pool:size() end

---Slots that start their kernel on a gateway.
---@return integer
function Pool:remote() end

---Slots whose idle kernel is live and ready to hand out now.
---@return integer
function Pool:ready() end

---The hosts given (`hosts` / `exec.gateway_hosts`), each with how many seconds it is still avoided.
---@return {host: string, avoided_for: number}[]
function Pool:hosts() end

---Keep new kernel starts away from `host` for `seconds` (`0`: no longer); slots whose start failed are
---started again at once, on the other hosts. The decision is the caller's (`stdlib/hosts.lua`).
---@param host string
---@param seconds number
---@return true
function Pool:avoid(host, seconds) end

---The failed kernel starts since the last call (at most the latest 100), with the host each was pinned to.
---@return {slot: integer, host: string|nil, kind: cellsci.kernel.ErrorKind, message: string}[]
function Pool:failures() end

---Shut down the pool's idle kernels and stop starting new ones; kernels handed out are shut down when
---given back. Later `acquire` calls raise.
---@return true
function Pool:shutdown() end

---Options of `k:execute`. Any other key raises.
---@class cellsci.kernel.ExecOpts
---@field timeout? number|false Seconds before the cell is interrupted (`status = "timeout"`); `false` for none. Default: the config's `exec.timeout_seconds` (`3600`) when there is a config, else none.
---@field on_output? fun(output: table, msg_type: string) Called as outputs arrive: a stream piece `{output_type = "stream", name, text}` (the new text only) or the nbformat output as created/updated; `msg_type` is the Jupyter message type (`"stream"`, `"display_data"`, `"execute_result"`, `"error"`, `"update_display_data"`, ...). It must not call async functions; an error in it is raised by `k:execute`. Default: none.
---@field max_output_bytes? integer Bytes each stream (stdout, stderr) of the cell keeps: a cell printing more keeps its first and its last half (whole lines), around a line `[... cellsci: 45.2 MB of stdout dropped here; ...]`; the kernel and the cell go on as usual. `0` keeps everything. Default: `exec.max_output_bytes`, else 4 MiB (4194304).
---@field silent? boolean Jupyter's silent execution: no execution count, no history, no execute_result (for set-up code). Default: `false`.

---The nbclient-style timestamps of an execution (ISO 8601 strings), as saved in a cell's
---`metadata.execution`.
---@class cellsci.kernel.Timing
---@field ["iopub.status.busy"] string?
---@field ["iopub.execute_input"] string?
---@field ["shell.execute_reply"] string?
---@field ["iopub.status.idle"] string?

---What `k:execute` returns. Pass it to `nb:set_outputs(i, r)` to store it in a notebook.
---@class cellsci.kernel.Result
---@field status "ok"|"error"|"timeout"|"dead" `error`: the cell raised (also `sys.exit()`); `timeout`: interrupted after `timeout` (outputs so far kept); `dead`: the kernel process ended (call `k:restart()`).
---@field outputs table[] nbformat outputs (streams merged, `\r` applied, display updates within the cell applied; text as single strings). Updates that reach outputs of earlier cells by display id are applied by `cellsci notebook run`, not here.
---@field execution_count? integer
---@field ename? string The exception's class, e.g. `"ValueError"`.
---@field evalue? string The exception's message.
---@field traceback? string One string, ANSI colours stripped (the notebook keeps the coloured lines).
---@field duration number Seconds.
---@field timing cellsci.kernel.Timing
---@field message? string For `timeout` / `dead`: what happened.
---@field restarted boolean True when a timeout ended in kill + restart (the kernel's state is gone).
---@field exit_code? integer When `status == "dead"` and the process exited.
---@field signal? integer When `status == "dead"` and the process was killed by a signal.
---@field likely_oom? boolean When `status == "dead"`: killed by SIGKILL, likely out of memory.

---A running Jupyter kernel (a handle; `tostring(k)` is `"kernel (<name>)"`).
---@class cellsci.kernel.Kernel
---@field name string The kernelspec name.
---@field gateway string|nil The gateway's URL for a kernel on a gateway; nil for a local kernel.
local Kernel = {}

---Run code and wait for the result. A raised exception, a timeout or a dead kernel is a result
---(see `status`), not an error. Raises on an unknown option.
---@param code string
---@param opts? cellsci.kernel.ExecOpts
---@return cellsci.kernel.Result|nil result
---@return cellsci.kernel.Error|nil err `kind = "interrupted"` (Ctrl-C) or `"kernel"` (protocol failure).
function Kernel:execute(code, opts) end

---Interrupt the running cell: SIGINT to the kernel's process group, or an `interrupt_request` when the
---spec's `interrupt_mode` is `"message"`.
---@return true|nil ok
---@return cellsci.kernel.Error|nil err `kind = "kernel"`.
function Kernel:interrupt() end

---Kill the kernel and start it fresh (after `"dead"`, or to reset its state).
---@return true|nil ok
---@return cellsci.kernel.Error|nil err `kind = "start"` or `"interrupted"`.
function Kernel:restart() end

---Ask the kernel to shut down (`shutdown_request`), killing it if it does not exit within 3 s.
---@return true
function Kernel:shutdown() end

---Whether the kernel process is running (`true` while a cell is executing; `false` once it exited).
---@return boolean
function Kernel:alive() end

---The kernel process id (also while a cell is executing); nil once the kernel has died or been shut
---down, until `k:restart()`.
---@return integer|nil pid
function Kernel:pid() end

---Move the kernel into `cwd` with `env` set, now and after every restart, until it goes back to its pool
---(a pool kernel taken for one trial). A gateway kernel gets the paths as the gateway names them
---(`exec.gateway_paths`), after checking it sees `cwd`.
---@param opts {cwd: string, env?: table<string, string|number|boolean>}
---@return true|nil ok
---@return cellsci.kernel.Error|nil err `kind = "config"` (a gateway kernel that cannot see `cwd`), `"interrupted"`, or `"start"`.
function Kernel:enter(opts) end

---The GPU a pool kernel is pinned to (`CUDA_VISIBLE_DEVICES`; inside the kernel it is `cuda:0`); nil for
---`kernel.start{}` and for pools without `gpus`.
---@return integer|nil gpu
function Kernel:gpu() end

---Where a gateway kernel runs, as the kernel said at its last (re)start: the address its SSH launch came
---in on (`SSH_CONNECTION`, Enterprise Gateway's DistributedProcessProxy), else its host name; nil for a
---kernel on this machine.
---@return string|nil host
function Kernel:host() end

return kernel
