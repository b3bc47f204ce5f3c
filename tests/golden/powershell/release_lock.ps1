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

$ImagingAction = 'release_lock'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Releases the lock only if this operation holds it; releasing an absent lock is a no-op.
    $Vm = 'NDXZOOM'
    $LockPath = 'D:\Imaging\locks\NDXZOOM.lock'
    $OpId = 'reimage-20261121-1930-ab12'
    $mine = "$LockPath.$OpId.partial"  # left by a kill inside acquire_lock
    if (Test-Path -LiteralPath $mine) { Remove-Item -LiteralPath $mine -Force }
    if (Test-Path -LiteralPath $LockPath -PathType Leaf) {
        $held = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($LockPath))
        if ([string]$held.op_id -ne $OpId) {
            throw "refusing to release the lock of $Vm held by another operation ($($held.op_id), $($held.owner))"
        }
        Remove-Item -LiteralPath $LockPath -Force
        $Result['changed'] = $true
    }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
