# Post script of HF-2026C3-001: runs in the guest after the files are in place, before the service restart.
# A throw here fails the hotfix, and the instrument's files are put back.
$ErrorActionPreference = 'Stop'
$cfg = 'C:\Instrument\Apps\server\lib\runlock.cfg'
if (-not (Select-String -LiteralPath $cfg -Pattern '^timeout_s = \d+$' -Quiet)) {
    throw "$cfg has no timeout_s line"
}
