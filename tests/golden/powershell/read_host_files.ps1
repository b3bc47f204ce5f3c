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

$ImagingAction = 'read_host_files'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Read only: small files on the host itself (an instrument's lock, the note of its prepared generation),
    # so that every operator's `invoke status` sees them whatever its own journal holds. A path that does
    # not exist is left out; more than max_bytes in all is refused (these are notes, not disks).
    $Paths = @(@('E:\Imaging\locks\NDXZOOM.lock', 'E:\Imaging\instruments\NDXZOOM\prepared.json'))
    $MaxBytes = [long]1048576
    $found = [ordered]@{}
    $total = [long]0
    foreach ($path in $Paths) {
        if (Test-Path -LiteralPath $path -PathType Leaf) {
            $bytes = [System.IO.File]::ReadAllBytes($path)
            $total += $bytes.Length
            if ($total -gt $MaxBytes) { throw "$path is larger than a note: more than $MaxBytes bytes" }
            $found[[string]$path] = [System.Convert]::ToBase64String($bytes)
        }
    }
    $Result['found'] = $found
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
