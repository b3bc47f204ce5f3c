# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'acquire_lock'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Takes the instrument's lock file. Creation is atomic (a move onto a name that must not exist), so two
    # operations cannot both win.
    # Taking a lock this operation already holds is a no-op; a lock held by another is reported, not broken.
    $Vm = 'NDXZOOM'
    $LockPath = 'D:\Imaging\locks\NDXZOOM.lock'
    $OpId = 'reimage-20261121-1930-ab12'
    $Owner = 'jbloggs@ndw1234'
    Initialize-ImagingFolder -Path (Split-Path -Path $LockPath -Parent)
    $body = ConvertTo-Json -Compress -InputObject ([ordered]@{
        vm = $Vm; op_id = $OpId; owner = $Owner; host = $env:COMPUTERNAME
        since = [DateTime]::UtcNow.ToString('o')
    })
    # The content is written under this operation's own name first and moved into place: File.Move fails
    # when the lock exists and is atomic on NTFS, so a lock file is never seen empty, even after a kill.
    $mine = "$LockPath.$OpId.partial"
    $taken = $false
    try {
        [System.IO.File]::WriteAllText($mine, $body, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
        [System.IO.File]::Move($mine, $LockPath)
        $taken = $true
    }
    catch {
        # The move failed: either the lock exists (held) or something else went wrong (rethrown).
        if (-not (Test-Path -LiteralPath $LockPath -PathType Leaf)) { throw }
    }
    finally { if (Test-Path -LiteralPath $mine) { Remove-Item -LiteralPath $mine -Force } }
    if ($taken) {
        $Result['changed'] = $true
    }
    else {
        $held = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($LockPath))
        if ([string]$held.op_id -ne $OpId) {
            $Result['ok'] = $false
            $Result['held_by'] = $held
            $Result['error'] = "instrument $Vm is locked by $($held.owner) (operation $($held.op_id)) since $($held.since)"
        }
    }
    $Result['lock_path'] = $LockPath
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
