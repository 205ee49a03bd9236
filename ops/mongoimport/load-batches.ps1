# orininu-cdc, the mongoimport path on Windows (the original project's shape): export the outbox into
# archive batches, load every batch not yet loaded with mongoimport, in order, then record each as
# loaded. ops/windows/cdc-mongoimport.xml runs it every 5 minutes; ops/README.md, "The mongoimport path".
#
# Needs mongoimport.exe (MongoDB Database Tools 100.3 or later, for --config) and mongosh.exe on PATH,
# and the user environment of the task's account: CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB,
# CDC_ARCHIVE_DIR. The MongoDB URI never becomes an argument: mongoimport reads it from a file in the
# account's own TEMP folder, mongosh from its environment. CDC_EXE names cdc.exe if it is elsewhere.
#
# The steps, by hand:
#     cdc export --once
#     cdc archive mongoimport-commands --unloaded --shell powershell --mark-loaded cdc
# then run the printed lines in order, stopping at the first that fails.
$ErrorActionPreference = 'Stop'
$cdc = if ($env:CDC_EXE) { $env:CDC_EXE } else { 'C:\orininu-cdc\.venv\Scripts\cdc.exe' }
if (-not $env:CDC_MONGO_URI) { Write-Error 'CDC_MONGO_URI is not set (a user environment variable of this account)'; exit 1 }
$config = New-TemporaryFile
try {
    Set-Content -LiteralPath $config -Encoding ascii -Value ("uri: '" + ($env:CDC_MONGO_URI -replace "'", "''") + "'")
    & $cdc export --once
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    $lines = & $cdc archive mongoimport-commands --unloaded --shell powershell --config $config.FullName --mark-loaded $cdc
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    foreach ($line in $lines) {
        if ($line -match '^\s*(#|$)') { continue }
        Invoke-Expression $line
        if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    }
} finally {
    Remove-Item -LiteralPath $config -Force -ErrorAction SilentlyContinue
}
